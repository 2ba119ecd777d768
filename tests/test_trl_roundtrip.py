"""A stored version is TRL's conversational preference format: it loads with `datasets` and trains in DPOTrainer."""

import datasets
import torch
from transformers import AutoModelForCausalLM
from trl import DPOConfig, DPOTrainer

from realign_data.store import Store
from tests.helpers import pair_row, pair_table


def test_stored_version_trains_one_dpo_step_without_conversion(tmp_path, tiny_model_dir, tokenizer):
    store = Store(tmp_path / "store")
    version = store.write_version("trl", [pair_table([pair_row(i) for i in range(8)])])
    dataset = datasets.load_dataset("parquet", data_files=[str(f) for f in version.files], split="train")
    assert dataset.num_rows == 8
    assert dataset[0]["chosen"] == [{"role": "assistant", "content": "A careful answer to 0."}]

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    args = DPOConfig(
        output_dir=str(tmp_path / "out"),
        max_steps=1,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        bf16=False,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        max_length=128,
    )
    trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    result = trainer.train()
    assert result.global_step == 1
    assert torch.isfinite(torch.tensor(result.training_loss))
    changed = [name for name, p in model.named_parameters() if not torch.equal(p.detach(), before[name])]
    assert changed, "one optimizer step must move the weights"

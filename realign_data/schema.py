"""The row contract of every pair dataset: TRL's conversational preference format plus provenance.

``prompt`` is a list of chat messages ending with a user turn; ``chosen`` and ``rejected`` each hold one assistant
message. The remaining columns say where the pair came from. ``sample_params`` is a JSON object serialized as text.
A table that breaks the contract raises an InputError naming the row and the field.
"""

from __future__ import annotations

from typing import Literal, get_args

import pyarrow as pa
import pyarrow.compute as pc

from realign_data.errors import InputError

# on_policy: two policy samples; revision: draft -> revision posed as the structured revision task; revision_direct:
# the same pair under the plain instruction (ablation); reviser_train: pairs that teach the reviser
PairType = Literal["on_policy", "revision", "revision_direct", "reviser_train"]
PAIR_TYPES: tuple[str, ...] = get_args(PairType)
MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
CONVERSATION = pa.list_(MESSAGE)
PAIR_SCHEMA = pa.schema(
    [
        ("prompt", CONVERSATION),
        ("chosen", CONVERSATION),
        ("rejected", CONVERSATION),
        ("pair_id", pa.string()),
        ("prompt_id", pa.string()),
        ("pair_type", pa.string()),
        ("chosen_score", pa.float64()),
        ("rejected_score", pa.float64()),
        ("margin", pa.float64()),
        ("chosen_source", pa.string()),
        ("rejected_source", pa.string()),
        ("policy_model", pa.string()),
        ("reviser_model", pa.string()),
        ("scorer", pa.string()),
        ("sample_params", pa.string()),
    ]
)
NULLABLE = frozenset({"reviser_model"})  # on-policy pairs involve no reviser
MARGIN_TOLERANCE = 1e-6


def _first(mask: pa.Array) -> int | None:
    """Index of the first true value in a boolean mask (nulls count as false), or None."""
    indices = pc.indices_nonzero(pc.fill_null(mask, False))
    return indices[0].as_py() if len(indices) else None


def _last_roles(conversations: pa.Array) -> pa.Array:
    offsets = conversations.offsets
    roles = pc.struct_field(conversations.values, "role")
    return roles.take(pc.subtract(offsets[1:], 1))


def conform(table: pa.Table, first_row: int = 0, where: str = "pairs") -> pa.Table:
    """Cast ``table`` to PAIR_SCHEMA and check every row; ``first_row`` offsets row numbers in messages."""
    missing = [name for name in PAIR_SCHEMA.names if name not in table.column_names]
    if missing:
        raise InputError(
            f"{where}: missing column(s) {', '.join(missing)} (the pair contract needs {', '.join(PAIR_SCHEMA.names)})"
        )
    extra = [name for name in table.column_names if name not in PAIR_SCHEMA.names]
    if extra:
        raise InputError(f"{where}: unknown column(s) {', '.join(extra)} (not in the pair contract)")
    try:
        table = table.select(PAIR_SCHEMA.names).cast(PAIR_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        fields = {name: table.schema.field(name).type for name in PAIR_SCHEMA.names}
        wrong = [
            f"'{n}' is {t}, expected {PAIR_SCHEMA.field(n).type}"
            for n, t in fields.items()
            if t != PAIR_SCHEMA.field(n).type
        ]
        raise InputError(f"{where}: wrong column type: {'; '.join(wrong) or exc}") from None
    table = table.combine_chunks()

    def fail(mask: pa.Array, field: str, problem: str) -> None:
        row = _first(mask)
        if row is not None:
            raise InputError(f"{where}: row {first_row + row}: field '{field}' {problem}")

    if table.num_rows == 0:
        return table
    column = {name: table[name].chunk(0) for name in PAIR_SCHEMA.names}
    for name in PAIR_SCHEMA.names:
        if name not in NULLABLE:
            fail(pc.is_null(column[name]), name, "is null")
    fail(
        pc.invert(pc.is_in(column["pair_type"], pa.array(PAIR_TYPES))),
        "pair_type",
        f"is not one of {', '.join(PAIR_TYPES)}",
    )
    for name in ("pair_id", "prompt_id"):
        fail(pc.equal(pc.utf8_length(column[name]), 0), name, "is empty")
    fail(pc.equal(pc.list_value_length(column["prompt"]), 0), "prompt", "has no messages")
    fail(pc.not_equal(_last_roles(column["prompt"]), "user"), "prompt", "must end with a user message")
    for name in ("chosen", "rejected"):
        fail(pc.not_equal(pc.list_value_length(column[name]), 1), name, "must hold exactly one message")
        fail(pc.not_equal(_last_roles(column[name]), "assistant"), name, "must be an assistant message")
    for name in ("prompt", "chosen", "rejected"):
        null_content = _first(pc.is_null(pc.struct_field(pc.list_flatten(column[name]), "content")))
        if null_content is not None:
            row = pc.list_parent_indices(column[name])[null_content].as_py()
            raise InputError(f"{where}: row {first_row + row}: field '{name}' has a message with null content")
    for name in ("chosen_score", "rejected_score", "margin"):
        fail(pc.invert(pc.is_finite(column[name])), name, "is not a finite number")
    expected = pc.subtract(column["chosen_score"], column["rejected_score"])
    fail(
        pc.greater(pc.abs(pc.subtract(column["margin"], expected)), MARGIN_TOLERANCE),
        "margin",
        "is not chosen_score - rejected_score",
    )
    return table

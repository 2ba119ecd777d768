"""The row contract of every pair dataset: TRL's conversational preference format plus provenance.

``prompt`` is a list of chat messages ending with a user turn; ``chosen`` and ``rejected`` each hold one assistant
message. The remaining columns say where the pair came from. ``sample_params`` is a JSON object serialized as text.
The optional columns (OPTIONAL) say how each response ended (``stop``, or ``length`` when it hit the token limit)
and how many tokens it has; they are null where unknown (a reference response, a dataset written before realign 0.3
or imported without them) and added as nulls when a table lacks them. A table that breaks the contract raises an
InputError naming the row and the field. The samples contract (SAMPLE_SCHEMA) is the row format of samples versions.
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
        ("chosen_finish_reason", pa.string()),
        ("rejected_finish_reason", pa.string()),
        ("chosen_tokens", pa.int32()),
        ("rejected_tokens", pa.int32()),
    ]
)
OPTIONAL = ("chosen_finish_reason", "rejected_finish_reason", "chosen_tokens", "rejected_tokens")
FINISH_REASONS = ("stop", "length")  # length: the response hit the token limit (cut off)
NULLABLE = frozenset({"reviser_model", *OPTIONAL})  # reviser_model: on-policy pairs involve no reviser
MARGIN_TOLERANCE = 1e-6


def _first(mask: pa.Array) -> int | None:
    """Index of the first true value in a boolean mask (nulls count as false), or None."""
    indices = pc.indices_nonzero(pc.fill_null(mask, False))
    return indices[0].as_py() if len(indices) else None


def _outside(values: pa.Array, allowed: tuple[str, ...]) -> pa.Array:
    """True where a (non-null) value is not one of ``allowed``."""
    return pc.and_(pc.is_valid(values), pc.invert(pc.is_in(values, pa.array(allowed))))


def _last_roles(conversations: pa.Array) -> pa.Array:
    offsets = conversations.offsets
    roles = pc.struct_field(conversations.values, "role")
    return roles.take(pc.subtract(offsets[1:], 1))


def _cast(table: pa.Table, schema: pa.Schema, optional: tuple[str, ...], where: str, contract: str) -> pa.Table:
    """``table`` cast to ``schema`` (missing ``optional`` columns added as nulls), or the InputError saying which
    columns are missing, unknown or of the wrong type."""
    for name in optional:
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows, schema.field(name).type))
    missing = [name for name in schema.names if name not in table.column_names]
    if missing:
        raise InputError(
            f"{where}: missing column(s) {', '.join(missing)} (the {contract} needs {', '.join(schema.names)})"
        )
    extra = [name for name in table.column_names if name not in schema.names]
    if extra:
        raise InputError(f"{where}: unknown column(s) {', '.join(extra)} (not in the {contract})")
    try:
        table = table.select(schema.names).cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        fields = {name: table.schema.field(name).type for name in schema.names}
        wrong = [
            f"'{n}' is {t}, expected {schema.field(n).type}" for n, t in fields.items() if t != schema.field(n).type
        ]
        raise InputError(f"{where}: wrong column type: {'; '.join(wrong) or exc}") from None
    return table.combine_chunks()


def _checker(table: pa.Table, nullable: frozenset[str], where: str, first_row: int):
    """The columns of a cast, non-empty ``table`` by name, and ``fail(mask, field, problem)``, which raises the
    InputError naming the first row where ``mask`` holds; columns not in ``nullable`` are checked for nulls."""

    def fail(mask: pa.Array, field: str, problem: str) -> None:
        row = _first(mask)
        if row is not None:
            raise InputError(f"{where}: row {first_row + row}: field '{field}' {problem}")

    column = {name: table[name].chunk(0) for name in table.column_names}
    for name, values in column.items():
        if name not in nullable:
            fail(pc.is_null(values), name, "is null")
    return column, fail


def conform(table: pa.Table, first_row: int = 0, where: str = "pairs") -> pa.Table:
    """Cast ``table`` to PAIR_SCHEMA and check every row; ``first_row`` offsets row numbers in messages."""
    table = _cast(table, PAIR_SCHEMA, OPTIONAL, where, "pair contract")
    if table.num_rows == 0:
        return table
    column, fail = _checker(table, NULLABLE, where, first_row)
    fail(_outside(column["pair_type"], PAIR_TYPES), "pair_type", f"is not one of {', '.join(PAIR_TYPES)}")
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
    for side in ("chosen", "rejected"):
        reason = column[f"{side}_finish_reason"]
        fail(_outside(reason, FINISH_REASONS), f"{side}_finish_reason", "is not stop or length")
        fail(pc.less(column[f"{side}_tokens"], 0), f"{side}_tokens", "is negative")
    expected = pc.subtract(column["chosen_score"], column["rejected_score"])
    fail(
        pc.greater(pc.abs(pc.subtract(column["margin"], expected)), MARGIN_TOLERANCE),
        "margin",
        "is not chosen_score - rejected_score",
    )
    return table


# One row per response of a build: the policy's samples, the reviser's revisions (``index``: the sample index of the
# draft revised) and the prompt source's reference responses, each with its score (null: the scorer could not rate
# it), finish reason and completion tokens (null where unknown, as for a reference).
ResponseKind = Literal["sample", "revision", "reference"]
RESPONSE_KINDS: tuple[str, ...] = get_args(ResponseKind)
SAMPLE_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("prompt_id", pa.string()),
        ("prompt", CONVERSATION),
        ("kind", pa.string()),
        ("index", pa.int32()),
        ("text", pa.string()),
        ("score", pa.float64()),
        ("finish_reason", pa.string()),
        ("completion_tokens", pa.int32()),
        ("model", pa.string()),
        ("scorer", pa.string()),
    ]
)
SAMPLE_NULLABLE = frozenset({"index", "score", "finish_reason", "completion_tokens", "model"})


def conform_samples(table: pa.Table, first_row: int = 0, where: str = "samples") -> pa.Table:
    """Cast ``table`` to SAMPLE_SCHEMA and check every row."""
    table = _cast(table, SAMPLE_SCHEMA, (), where, "samples contract")
    if table.num_rows == 0:
        return table
    column, fail = _checker(table, SAMPLE_NULLABLE, where, first_row)
    fail(_outside(column["kind"], RESPONSE_KINDS), "kind", f"is not one of {', '.join(RESPONSE_KINDS)}")
    fail(_outside(column["finish_reason"], FINISH_REASONS), "finish_reason", "is not stop or length")
    fail(pc.invert(pc.is_finite(column["score"])), "score", "is not a finite number")
    fail(pc.and_(pc.not_equal(column["kind"], "reference"), pc.is_null(column["index"])), "index", "is null")
    return table

"""``headatlas info``: what the toolkit reads from a model."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from ..config import ModelConfig
from .options import from_config


@from_config(model=ModelConfig)
def info_command(model: ModelConfig) -> None:
    """Load a model and show its heads, layer kinds, what each command supports on it, EOS tokens and chat template."""
    from ..model_spec import eos_token_ids, load_model
    from ..model_support import command_support, layer_rows

    loaded, tokenizer, spec = load_model(model.model, dtype=model.dtype, device=model.device or "cpu",
                                         device_map=model.device_map, attn_implementation=model.attn_implementation)
    table = Table(title=f"{model.model}")
    table.add_column("property")
    table.add_column("value")
    for key, value in spec.describe().items():
        table.add_row(key, str(value))
    table.add_row("total heads", str(spec.n_total_heads))
    table.add_row("attention backend", loaded.config._attn_implementation)
    table.add_row("eos token ids", str(eos_token_ids(loaded, tokenizer)))
    table.add_row("chat template", "yes" if getattr(tokenizer, "chat_template", None) else "no")
    layers = Table(title="layers")
    rows = layer_rows(spec)
    for column in rows[0]:
        layers.add_column(column)
    for row in rows:
        layers.add_row(*(str(v) for v in row.values()))
    support = Table(title="commands")
    support.add_column("command")
    support.add_column("on this model")
    for command, what in command_support(spec).items():
        support.add_row(command, what)
    console = Console()
    console.print(table, layers, support)

"""Plain command-line values coerced without pydantic.

typer 0.29 coerces every parameter of the command it runs through a pydantic `TypeAdapter` it builds on first use
(`typer._coercion.build_runtime_param`), defaults included, and offers no option that routes a plain `str`, `int`,
`float` or `bool` parameter elsewhere (`parser=` builds an adapter too): any command but `--help` then imports
pydantic, about twice what typer itself costs (`bench/cli_latency.py`). `install()` puts a narrow step in front of
that: a value that already has its parameter's plain type (a default, a string for a `str`), or a decimal integer for
an `int`, is taken as the adapter would give it; anything else, and every other kind of parameter (paths, choices,
ranges, parsers, lists, files), goes to typer's own coercion, unchanged, built when such a value comes (an option
left unset builds none). The step is checked against typer's adapters
(tests/jetl/cli/test_coerce.py) and left out when the installed typer has no such private hook.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_INT = re.compile(r"-?[0-9]{1,18}")
"""Integers taken as they are: pydantic reads these the same way (no sign '+', no '_', no spaces)."""

PLAIN = (str, int, float, bool)
"""Annotations the step coerces itself, when none of typer's options on values applies."""


def _plain(value: Any, annotation: type) -> tuple[bool, Any]:
    """(True, the value typer's adapter gives) when it is sure of it, else (False, None)."""
    kind = type(value)
    if kind is annotation:
        return True, value
    if annotation is float and kind is int:
        return True, float(value)
    if annotation is int and kind is str and _INT.fullmatch(value):
        return True, int(value)
    return False, None


def install() -> bool:
    """Put the step in front of typer's coercion; False (nothing done) on a typer without the hook it needs."""
    try:
        from typer._coercion import RuntimeParam, build_runtime_param
        from typer.core import _TyperParameter
    except ImportError:  # a typer without adapters (before 0.29) or with other internals: its own coercion stays
        return False
    if not hasattr(_TyperParameter, "get_runtime_param"):
        return False

    @dataclass(frozen=True)
    class PlainRuntimeParam(RuntimeParam):
        """Coerces the sure cases of a plain parameter itself and hands anything else (of any parameter) to typer's
        runtime parameter, built then: a value left unset (None) is never coerced (`RuntimeParam.coerce`)."""

        plain: bool
        full: list[Any]

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            if self.plain:
                assert isinstance(self.annotation, type)
                sure, coerced = _plain(value, self.annotation)
                if sure:
                    return coerced
            if not self.full:
                self.full.append(build_runtime_param(param.type_descriptor))
            return self.full[0]._coerce_value(value, param=param, ctx=ctx)

    def get_runtime_param(self: Any) -> Any:
        if self._runtime_param is None:
            d = self.type_descriptor
            info = d.parameter_info
            plain = (
                d.annotation in PLAIN
                and getattr(info, "parser", None) is None
                and getattr(info, "min", None) is None
                and getattr(info, "max", None) is None
                and not d.is_file
                and not d.is_path
                and not d.is_choice
            )
            self._runtime_param = PlainRuntimeParam(parameter_info=info, annotation=d.annotation, plain=plain, full=[])
        return self._runtime_param

    _TyperParameter.get_runtime_param = get_runtime_param  # type: ignore[method-assign]
    return True

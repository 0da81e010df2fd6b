"""The seed-stream table (``trainables.config.seeds``): no stream number is used twice, and every
``derive_seed`` call in the package names a stream of the table, never a raw number."""

from __future__ import annotations

import ast
from pathlib import Path

import trainables
from trainables.config.seeds import CONSUMERS, Stream, derive_seed

PACKAGE = Path(trainables.__file__).parent


def _derive_seed_calls() -> list[tuple[str, ast.Call]]:
    calls = []
    for path in PACKAGE.rglob("*.py"):
        module = "trainables." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "derive_seed":
                calls.append((module, node))
    return calls


def test_stream_numbers_are_unique_and_each_has_its_consumer() -> None:
    assert len({int(s) for s in Stream}) == len(Stream)
    assert set(CONSUMERS) == set(Stream)


def test_every_derive_seed_call_names_a_stream_of_its_module() -> None:
    """A call with a literal number would collide silently with a table entry; a stream drawn in a
    module the table does not name is a second consumer of that stream."""
    used: dict[Stream, set[str]] = {}
    for module, call in _derive_seed_calls():
        for arg in call.args[1:]:
            assert not isinstance(arg, ast.Constant), f"{module}: derive_seed with a raw number {arg.value}"
        for node in ast.walk(call):
            if isinstance(node, ast.Attribute) and getattr(node.value, "id", None) == "Stream":
                used.setdefault(Stream[node.attr], set()).add(module)
    for stream, modules in used.items():
        assert modules == {CONSUMERS[stream]}, f"Stream.{stream.name} drawn by {modules}, the table says {CONSUMERS[stream]}"
    for stream, module in CONSUMERS.items():
        source = (PACKAGE / Path(*module.split(".")[1:])).with_suffix(".py").read_text()
        assert f"Stream.{stream.name}" in source, f"{module} does not draw from {stream.name}"
        others = [m for m in set(CONSUMERS.values()) - {module}
                  if f"Stream.{stream.name}" in (PACKAGE / Path(*m.split('.')[1:])).with_suffix(".py").read_text()]
        assert not others, f"Stream.{stream.name} is drawn by {module} and {others}"


def test_streams_give_independent_seeds() -> None:
    """The shapes the consumers call it with: (seed, stream) once per trial, (seed, epoch, stream
    [, rank]) per epoch; every draw of a few epochs and two ranks gets its own seed."""
    once = [(0, s) for s in (Stream.INIT, Stream.REBUILD)]
    per_epoch = [(0, e, s, *r) for e in range(4) for s in Stream if s not in (Stream.INIT, Stream.REBUILD)
                 for r in ((), (1,))]
    keys = once + per_epoch
    assert len({derive_seed(*k) for k in keys}) == len(keys)

"""Every flag of the user commands says what it does, and its default once (issue 27)."""
from __future__ import annotations

import argparse
import importlib

import pytest

PARSERS = [
    ("run.config", "get_args_parser"), ("run.demo", "get_args_parser"),
    ("inference.gen_feat", "get_args_parser"), ("inference.assess", "get_args_parser"),
    ("inference.calibrate", "get_args_parser"), ("inference.export_onnx", "get_args_parser"),
    ("inference.ort_embed", "get_args_parser"), ("inference.toy_example", "get_args_parser"),
    ("faces.align", "get_args_parser"), ("dataloader.prepare", "get_args_parser"),
    ("dataloader.pack_rec", "get_args_parser"), ("eval.verification", "build_parser"),
    ("eval.quality", "build_parser"), ("eval.ijb", "build_parser"), ("eval.damage", "build_parser"),
    ("eval.cluster", "build_parser"),
]


def _expanded_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    formatter = parser._get_formatter()
    return formatter._expand_help(action) if action.help else ""


def _parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parser and those of its sub-commands."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return [parser, *(p for a in subs for sub in dict.fromkeys(a.choices.values()) for p in _parsers(sub))]


@pytest.mark.parametrize(("module", "factory"), PARSERS)
def test_every_flag_has_help_and_one_default(module, factory):
    for parser in _parsers(getattr(importlib.import_module(module), factory)()):
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            name = f"{parser.prog} " + ("/".join(action.option_strings) or action.dest)
            text = _expanded_help(parser, action)
            assert text.strip(), f"{module}: {name} has no help"
            assert "(default: None)" not in text and "(default: False)" not in text, f"{module}: {name}: {text}"
            assert text.lower().count("default") <= 1, f"{module}: {name} says its default twice: {text}"

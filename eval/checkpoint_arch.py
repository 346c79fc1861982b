"""The backbone a checkpoint holds, for the seed's shell scripts (eval_recognition/eval.sh, eval_ijb.sh, eval/eval.sh).

    python -m eval.checkpoint_arch [--prog NAME] CKPT [NL]        # prints e.g. "iresnet18_w32 128"

The seed's scripts name the backbone by its depth suffix NL (``--arch iresnet${NL}``), so a user must read
the script to learn that a demo checkpoint needs ``18_w32``. Our checkpoints (and the seed's) record their
``arch``; without NL that is printed, and a file without one (a bare state dict) gets the registered
backbone its weights match. NL may also be a full name (``mobilefacenet``, ``r50``). When NL is given and
disagrees with the checkpoint, the weights would not load into that network: one line says so (exit 2)
rather than gen_feat failing with a list of mis-shaped keys. A file that records nothing and matches no
known backbone is taken as NL says (gen_feat then reports what does not fit). The second word printed is
the embedding size (the seed's eval_ijb.sh fixed it to 512).
"""
from __future__ import annotations

import argparse
import sys
import zipfile
from pathlib import Path

from models.backbones import canonical_arch
from models.checkpoint import backbone_state, embedding_size_of, guess_arch, read_checkpoint
from utils.cli import run_cli


def nl_arch(nl: str) -> str:
    """The seed's NL (``100``, ``18_w32``: a depth suffix of iresnet) or a backbone name, as a registered name."""
    return canonical_arch(f"iresnet{nl}" if nl[:1].isdigit() else nl)


def checkpoint_arch(path: str | Path) -> tuple[str | None, str, int]:
    """(arch or None, how it is known, embedding size): the recorded ``arch``, else the backbone the weights
    match; the embedding size as ``load_backbone`` builds it."""
    path = Path(path)
    obj = read_checkpoint(path, mmap=path.is_file() and zipfile.is_zipfile(path))  # metadata only: map, not read
    state = backbone_state(obj, path)
    emb = embedding_size_of(state) or 512
    recorded = obj.get("arch")
    if isinstance(recorded, str) and recorded:
        return canonical_arch(recorded), f"records arch {canonical_arch(recorded)}", emb
    guessed = guess_arch(state)
    if guessed:
        return guessed, f"records no arch; its weights fit {guessed}", emb
    return None, "records no arch and its weights fit no registered backbone", emb


def resolve_arch(ckpt: str | Path, nl: str | None = None) -> tuple[str, int]:
    """(arch to evaluate ``ckpt`` with, embedding size); ValueError (one line) when NL disagrees or none is known."""
    arch, how, emb = checkpoint_arch(ckpt)
    if nl is None:
        if arch is None:
            raise ValueError(f"checkpoint {ckpt} {how}: pass NL (the seed's depth suffix, e.g. 100) or a backbone name")
        return arch, emb
    wanted = nl_arch(nl)
    if arch is not None and arch != wanted:
        suffix = arch[len("iresnet"):] if arch.startswith("iresnet") else arch
        raise ValueError(f"NL {nl} means {wanted}, but checkpoint {ckpt} {how}: pass {suffix}, or leave NL out "
                         "to use the checkpoint's")
    return wanted, emb


def main(argv: list[str] | None = None) -> int:
    """Print "ARCH EMBEDDING_SIZE"; bad input is ``PROG: error: ...``, exit 2 (PROG: the calling script)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = "eval.checkpoint_arch"
    if argv[:1] == ["--prog"] and len(argv) > 1:
        prog, argv = argv[1], argv[2:]

    def _main(args: list[str]) -> int:
        p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
        p.add_argument("checkpoint", help="checkpoint file (ours, the seed's, or an insightface state dict)")
        p.add_argument("nl", nargs="?", default=None, help="the seed's depth suffix (100, 18_w32) or a backbone name")
        ns = p.parse_args(args)
        arch, emb = resolve_arch(ns.checkpoint, ns.nl)
        print(arch, emb)
        return 0

    return run_cli(_main, argv, prog)


if __name__ == "__main__":
    raise SystemExit(main())

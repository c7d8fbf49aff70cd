"""``python -m finlight pseudo-label --teacher T --input CORPUS --output out.jsonl``: a teacher labels a corpus.

Each output row (JSONL) holds the text, where it came from, the teacher's hard label, ``prob_<label>`` per
class, the logits by label name, and the teacher's identity. The corpus is a folder of ``.txt`` files (one
sentence a line), a glob, or files with a text column (CSV/TSV/JSONL/Parquet). Texts are cleaned
(whitespace), empties dropped, exact duplicates dropped (``--keep_duplicates`` keeps them), and labelled in
chunks with dynamic padding. ``--limit N`` takes the first N texts; ``--sample N --sample_seed S`` a seeded random
subsample of N texts (kept in corpus order), so a large corpus is not represented by its alphabetically first
files.

Resumable: rows are appended chunk by chunk, and after each chunk a sidecar ``<output>.progress.json``
records rows and bytes written (atomically replaced). On restart the sidecar must match the teacher, the
corpus (a hash of its texts) and the settings; the output is cut back to the recorded size (a chunk torn
by the interruption goes away) and checked row by row against the corpus, then labelling continues where
it stopped — no row is lost or written twice.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Optional, Sequence

import torch
from jsonargparse.typing import PositiveInt

from finlight.commands import run_command
from finlight.errors import FinlightError

log = logging.getLogger("finlight.distill.pseudo_label")
PROGRESS_SUFFIX = ".progress.json"


# ---------------------------------------------------------------------------------------------- corpus
def corpus_files(inputs: Sequence[str]) -> list[str]:
    """Expand folders (every ``*.txt`` below, sorted) and globs; plain files stay as given, in order."""
    files: list[str] = []
    for spec in inputs:
        if os.path.isdir(spec):
            found = sorted(str(p) for p in Path(spec).rglob("*.txt"))
            if not found:
                raise FinlightError(f"{spec}: folder holds no .txt files")
        elif any(c in spec for c in "*?["):
            found = sorted(glob.glob(spec, recursive=True))
            if not found:
                raise FinlightError(f"{spec}: the pattern matches no file")
        elif os.path.isfile(spec):
            found = [spec]
        else:
            raise FinlightError(f"{spec}: no such file, folder or pattern")
        files.extend(found)
    return files


def read_corpus(inputs: Sequence[str], fmt: str = "auto", text_column: str = "text",
                encoding: Optional[str] = None, dedupe: bool = True,
                limit: Optional[int] = None) -> tuple[list[str], list[str], dict]:
    """Texts and their origins (``file:line``) in a deterministic order, plus counts of what was dropped."""
    from finlight.core.data.cleaning import clean_text
    from finlight.core.data.records import DropLog
    from finlight.core.data.sources import read_records

    texts, origins, seen = [], [], set()
    counts = {"files": 0, "read": 0, "empty": 0, "duplicates": 0}
    drops = DropLog()
    for path in corpus_files(inputs):
        counts["files"] += 1
        for record in read_records(path, fmt, text_column=text_column, label_column=None, encoding=encoding,
                                   drops=drops):
            counts["read"] += 1
            text = clean_text(record.text)
            if not text:
                counts["empty"] += 1
                continue
            if dedupe:
                if text in seen:
                    counts["duplicates"] += 1
                    continue
                seen.add(text)
            texts.append(text)
            origins.append(record.origin)
            if limit is not None and len(texts) >= limit:
                drops.warn("corpus")
                return texts, origins, counts
    drops.warn("corpus")
    if not texts:
        raise FinlightError(f"the corpus {list(inputs)} holds no text")
    return texts, origins, counts


def sample_corpus(texts: list[str], origins: list[str], sample: Optional[int], seed: int = 0
                  ) -> tuple[list[str], list[str]]:
    """A seeded random subsample of ``sample`` texts, in corpus order (all of them when there are fewer).

    Why: ``limit`` takes the first N texts, i.e. the first transcripts in file order; a fixed random
    subsample represents the whole corpus. Same corpus, ``sample`` and ``seed`` → the same texts.
    """
    if sample is None or sample >= len(texts):
        return texts, origins
    import random

    keep = sorted(random.Random(seed).sample(range(len(texts)), sample))
    return [texts[i] for i in keep], [origins[i] for i in keep]


def corpus_fingerprint(texts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------- rows
def make_rows(texts: Sequence[str], origins: Sequence[str], logits: torch.Tensor, label_names: Sequence[str],
              teacher_id: str) -> list[dict]:
    probs = logits.softmax(-1)
    rows = []
    for text, origin, z, p in zip(texts, origins, logits.tolist(), probs.tolist()):
        best = max(range(len(p)), key=p.__getitem__)
        rows.append({"text": text, "source": origin, "label": label_names[best],
                     **{f"prob_{n}": round(v, 6) for n, v in zip(label_names, p)},
                     "logits": {n: round(v, 6) for n, v in zip(label_names, z)},
                     "teacher": teacher_id})
    return rows


def _encode_rows(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


# ---------------------------------------------------------------------------------------------- progress
def progress_path(output: str) -> str:
    return output + PROGRESS_SUFFIX


def _write_progress(output: str, state: dict) -> None:
    path = progress_path(output)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(state, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def read_progress(output: str) -> Optional[dict]:
    path = progress_path(output)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as err:
        raise FinlightError(f"{path}: unreadable progress record ({err.msg}); delete it and the output, or "
                            f"pass --overwrite") from None


def _resume_point(output: str, state: dict, texts: Sequence[str]) -> int:
    """Cut the output back to the last recorded chunk and check it against the corpus; rows already done."""
    rows_done, size = int(state["rows_done"]), int(state["bytes_done"])
    actual = os.path.getsize(output) if os.path.exists(output) else 0
    if actual < size:
        raise FinlightError(f"{output}: {actual} bytes, but {progress_path(output)} records {size}: the file was "
                            f"changed outside finlight; pass --overwrite to start again")
    if actual > size:
        log.warning("%s: dropping %d bytes written after the last recorded chunk (interrupted run)", output,
                    actual - size)
        with open(output, "r+b") as handle:
            handle.truncate(size)
    rows = 0
    with open(output, encoding="utf-8") as handle:
        for rows, line in enumerate(handle, start=1):
            try:
                text = json.loads(line)["text"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise FinlightError(f"{output}:{rows}: not a pseudo-label row; pass --overwrite") from None
            if rows > len(texts) or text != texts[rows - 1]:
                raise FinlightError(f"{output}:{rows}: row does not match the corpus; pass --overwrite")
    if rows != rows_done:
        raise FinlightError(f"{output}: holds another number of rows than {progress_path(output)} records "
                            f"({rows_done}); pass --overwrite")
    return rows_done


# ---------------------------------------------------------------------------------------------- command
def pseudo_label(teacher: str, inputs: Sequence[str], output: str, *, fmt: str = "auto", text_column: str = "text",
                 encoding: Optional[str] = None, dedupe: bool = True, limit: Optional[int] = None,
                 sample: Optional[int] = None, sample_seed: int = 0, batch_size: int = 64, max_length: int = 128,
                 chunk_size: int = 1024,
                 label_names: Optional[Sequence[str]] = None, device: str = "auto", overwrite: bool = False,
                 trust_remote_code: bool = False, progress_bar: bool = True) -> dict:
    """Label the corpus with the teacher into ``output`` (JSONL); returns the final progress record."""
    from finlight.distill.teacher import load_classifier

    if not output.endswith(".jsonl"):
        raise FinlightError(f"--output {output}: pseudo-labels are written as JSONL; name the file *.jsonl")
    if chunk_size < 1 or batch_size < 1:
        raise FinlightError("--chunk_size and --batch_size must be positive")
    if limit is not None and sample is not None:
        raise FinlightError("--limit takes the first N texts, --sample a random N: set one of them, not both")
    if sample is not None and sample < 1:
        raise FinlightError(f"--sample {sample}: must be a positive number of texts")
    state = None if overwrite else read_progress(output)
    if state is None and not overwrite and os.path.exists(output):
        raise FinlightError(f"{output}: exists without a progress record ({progress_path(output)}); pass "
                            f"--overwrite to replace it")
    texts, origins, counts = read_corpus(inputs, fmt, text_column, encoding, dedupe, limit)
    if sample is not None:
        counts["kept"] = min(sample, len(texts))
        counts["sampled_from"] = len(texts)
        texts, origins = sample_corpus(texts, origins, sample, sample_seed)
    fingerprint = corpus_fingerprint(texts)
    model = load_classifier(teacher, label_names, trust_remote_code)
    settings = {"max_length": max_length, "dedupe": dedupe}
    if sample is not None:
        settings.update(sample=sample, sample_seed=sample_seed)
    if state is not None:
        for key, ours, theirs in (("teacher", model.identity, state.get("teacher")),
                                  ("corpus_sha256", fingerprint, state.get("corpus_sha256")),
                                  ("settings", settings, state.get("settings"))):
            if ours != theirs:
                raise FinlightError(f"{progress_path(output)}: recorded {key} differs from this run's; resume with "
                                    f"the same teacher, corpus and settings, or pass --overwrite")
        if state.get("complete"):
            print(f"finlight: {output} is already complete ({state['rows_done']} rows)")
            return state
        done = _resume_point(output, state, texts)
        print(f"finlight: resuming {output} at row {done} of {len(texts)}")
    else:
        for path in (output, progress_path(output)):
            if os.path.exists(path):
                os.remove(path)
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        state = {"teacher": model.identity, "corpus_inputs": list(inputs), "corpus_sha256": fingerprint,
                 "corpus_counts": counts, "settings": settings, "label_names": model.label_names,
                 "total_rows": len(texts), "rows_done": 0, "bytes_done": 0, "complete": False}
        _write_progress(output, state)
        open(output, "wb").close()
        done = 0

    target = torch.device("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else torch.device(device)
    model.model.to(target)
    bar = _progress(len(texts), done, progress_bar)
    try:
        with open(output, "ab") as handle:
            for start in range(done, len(texts), chunk_size):
                end = min(start + chunk_size, len(texts))
                logits = classify_chunk(model, texts[start:end], batch_size, max_length, target, bar)
                handle.write(_encode_rows(make_rows(texts[start:end], origins[start:end], logits,
                                                    model.label_names, model.short_id)))
                handle.flush()
                os.fsync(handle.fileno())
                state.update(rows_done=end, bytes_done=handle.tell())
                _write_progress(output, state)
    finally:
        if bar is not None:
            bar.close()
    state["complete"] = True
    _write_progress(output, state)
    return state


def classify_chunk(model, texts, batch_size, max_length, device, bar) -> torch.Tensor:
    """One chunk through the teacher (a seam the resume test interrupts)."""
    from finlight.distill.teacher import classify_logits

    return classify_logits(model.model, model.tokenizer, texts, batch_size, max_length, device,
                           on_batch=bar.update if bar is not None else None)


def _progress(total: int, done: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, unit="text", desc="pseudo-label", dynamic_ncols=True)


def pseudo_label_command(teacher: str, input: list[str], output: str, format: str = "auto",
                         text_column: str = "text", encoding: Optional[str] = None, keep_duplicates: bool = False,
                         limit: Optional[PositiveInt] = None, sample: Optional[PositiveInt] = None,
                         sample_seed: int = 0, batch_size: PositiveInt = 64,
                         max_length: PositiveInt = 128, chunk_size: PositiveInt = 1024,
                         label_names: Optional[list[str]] = None, device: str = "auto", overwrite: bool = False,
                         trust_remote_code: bool = False, progress_bar: bool = True) -> dict:
    """Label an unlabeled corpus with a teacher (finlight .ckpt, Hugging Face directory or hub id); resumable.

    Args:
        teacher: finlight checkpoint, Hugging Face directory or hub id.
        input: folders of .txt files (one text a line), glob patterns, or CSV/TSV/JSONL/Parquet files.
        output: output .jsonl (a .progress.json sidecar is kept beside it).
        format: corpus file format (default: by suffix; .txt = lines).
        text_column: the text column of CSV/TSV/JSONL/Parquet files.
        encoding: corpus file encoding (default: utf-8, or the byte-order mark's).
        keep_duplicates: keep repeated texts (default: drop).
        limit: label only the first N texts (after cleaning).
        sample: label a seeded random subsample of N texts (after cleaning and dedupe; kept in corpus order).
        sample_seed: the subsample's seed.
        batch_size: texts per teacher batch.
        max_length: tokens per text.
        chunk_size: rows per appended, resumable chunk.
        label_names: class names in the head's order, for heads that only say LABEL_0 …
        device: auto, cpu, cuda or cuda:N.
        overwrite: start again instead of resuming.
        trust_remote_code: run the teacher repository's own code (off unless you trust it).
        progress_bar: show a progress bar (--no_progress_bar hides it).
    """
    state = pseudo_label(teacher, input, output, fmt=format, text_column=text_column, encoding=encoding,
                         dedupe=not keep_duplicates, limit=limit, sample=sample, sample_seed=sample_seed,
                         batch_size=batch_size, max_length=max_length,
                         chunk_size=chunk_size, label_names=label_names, device=device, overwrite=overwrite,
                         trust_remote_code=trust_remote_code, progress_bar=progress_bar)
    print(f"finlight: wrote {state['rows_done']} pseudo-labelled rows to {output} "
          f"(teacher {state['teacher']['source']})")
    return state


def pseudo_label_main(argv: list[str]) -> dict:
    return run_command(pseudo_label_command, argv, "pseudo-label")

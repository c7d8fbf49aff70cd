"""CausalLMClassifier and InstructionDataModule with a tiny random-init Llama and a byte-level BPE tokenizer
(chat template set) built offline; the two issue configs run end to end with the backbone swapped."""

import csv
import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from finlight.cli import run_cli
from finlight.causal_lm.data import IGNORE_INDEX, InstructionCollator, InstructionDataModule, PromptRenderer
from finlight.deploy.export import export_hf
from finlight.core.adapters import is_checkpointing
from finlight.core.losses import answer_only_lm_loss
from finlight.causal_lm.classifier import CausalLMClassifier

import conftest
from conftest import PHRASEBANK_ALL, SENTENCES, labelled_rows

REPO = Path(__file__).resolve().parents[1]
WORDS = ["Negative", "Neutral", "Positive"]


def byte_bpe_tokenizer(chat: bool = True):
    return conftest.byte_bpe_tokenizer([t for ts in SENTENCES.values() for t in ts] * 2, 320,
                                       extra_tokens=tuple(WORDS),  # one token per label word, whatever the merges
                                       chat=chat)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory) -> Path:
    return conftest.save_tiny_llama(tmp_path_factory.mktemp("tiny_llama"), byte_bpe_tokenizer())


@pytest.fixture(scope="module")
def tiny_phi_dir(tmp_path_factory) -> Path:
    from transformers import PhiConfig, PhiForSequenceClassification

    path = tmp_path_factory.mktemp("tiny_phi")
    tokenizer = byte_bpe_tokenizer(chat=False)
    tokenizer.pad_token = None  # as Phi-2: no pad token, the classifier must set one
    torch.manual_seed(0)
    config = PhiConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                       num_attention_heads=4, max_position_embeddings=256, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id)
    PhiForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def write_csv(path: Path, repeat: int = 2) -> str:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Sentence", "Sentiment"])
        writer.writerows(labelled_rows(repeat))
    return str(path)


def datamodule_with(tokenizer, path: str, **kwargs) -> InstructionDataModule:
    dm = InstructionDataModule(path=path, text_column="Sentence", label_column="Sentiment",
                               label_names=["negative", "neutral", "positive"], label_words=WORDS,
                               split_ratios=(0.5, 0.25, 0.25), **kwargs)
    dm.setup()
    dm.tokenizer = tokenizer
    return dm


def module_on(model_dir: Path, dm: InstructionDataModule, **kwargs) -> CausalLMClassifier:
    """A CausalLMClassifier built as `setup` builds it, outside a Trainer."""
    module = CausalLMClassifier(backbone=str(model_dir), **kwargs)
    model, tokenizer = module._load_base(str(model_dir))
    dm.tokenizer = tokenizer
    module._install(model, tokenizer, dm.label_names, dm.label_words, dm.renderer.label_token_ids())
    return module.eval()


# ---------------------------------------------------------------------------------------------- data
def test_prompt_uses_chat_template_and_loss_masks_every_prompt_token(in_tmp):
    tokenizer = byte_bpe_tokenizer()
    dm = datamodule_with(tokenizer, write_csv(in_tmp / "d.csv"), instruction="Answer with one of {labels}.")
    renderer = dm.renderer
    assert renderer.chat and renderer.render("Profit rose.") == (
        "<s><system>Answer with one of Negative, Neutral, Positive.\n<user>Profit rose.\n<assistant>")
    batch = next(iter(dm.train_dataloader()))
    eos = tokenizer.eos_token_id
    for row in range(len(batch["index"])):
        i = int(batch["index"][row])
        text, label = dm.splits["train"][i].text, dm.labels["train"][i]
        prompt = tokenizer(renderer.render(text), add_special_tokens=False)["input_ids"]
        answer = tokenizer(WORDS[label], add_special_tokens=False)["input_ids"] + [eos]
        n, p = len(prompt) + len(answer), len(prompt)
        assert batch["input_ids"][row, :n].tolist() == prompt + answer
        assert batch["lm_labels"][row, :p].eq(IGNORE_INDEX).all()          # every prompt token
        assert batch["lm_labels"][row, p:n].tolist() == answer              # label word + EOS
        assert batch["lm_labels"][row, n:].eq(IGNORE_INDEX).all()           # padding
        assert batch["attention_mask"][row].sum() == n
        # the left-padded prompt view, for generation
        assert batch["prompt_ids"][row, -p:].tolist() == prompt and batch["prompt_mask"][row].sum() == p


def test_plain_template_without_chat_template_and_truncation_keeps_the_answer(in_tmp):
    tokenizer = byte_bpe_tokenizer(chat=False)
    renderer = PromptRenderer(tokenizer, "Classify.", WORDS)
    assert not renderer.chat and renderer.render("Sales grew.") == "Classify.\n\nText: Sales grew.\nAnswer:"
    assert renderer.label_token_ids() == [tokenizer(" " + w, add_special_tokens=False)["input_ids"] for w in WORDS]
    long_text = " ".join(["Quarterly profit rose sharply on strong demand."] * 20)
    ids, prompt_lengths, truncated = renderer.encode([long_text, "Sales grew."], [2, 0], max_length=40)
    assert truncated == 1 and len(ids[0]) <= 40
    answer = renderer.label_token_ids()[2] + [tokenizer.eos_token_id]
    assert ids[0][prompt_lengths[0]:] == answer
    assert tokenizer.decode(ids[0][: prompt_lengths[0]]).startswith("Classify.\n\nText: Quarterly profit")


def test_dated_chat_templates_render_the_same_prompt_every_day():
    tokenizer = byte_bpe_tokenizer()
    tokenizer.chat_template = ("{% if not date_string is defined %}{% set date_string = strftime_now('%d %b %Y') %}"
                               "{% endif %}Today: {{ date_string }}|{{ messages[-1]['content'] }}")
    assert PromptRenderer(tokenizer, "Classify.", WORDS).render("Sales grew.") == "Today: 26 Jul 2024|Sales grew."


def test_collator_pads_right_for_the_loss_and_left_for_generation():
    batch = InstructionCollator(pad_token_id=0)([
        {"input_ids": [5, 6, 7, 8, 2], "prompt_length": 3, "labels": 1, "index": 0},
        {"input_ids": [5, 9, 2], "prompt_length": 2, "labels": 0, "index": 1},
    ])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 2], [5, 9, 2, 0, 0]]
    assert batch["lm_labels"].tolist() == [[-100, -100, -100, 8, 2], [-100, -100, 2, -100, -100]]
    assert batch["prompt_ids"].tolist() == [[5, 6, 7], [0, 5, 9]]
    assert batch["prompt_mask"].tolist() == [[1, 1, 1], [0, 1, 1]]
    assert batch["prompt_lengths"].tolist() == [3, 2] and batch["labels"].tolist() == [1, 0]


# ---------------------------------------------------------------------------------------------- scoring
@pytest.mark.parametrize("lora", [None, {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}])
def test_answer_loss_projects_only_answer_positions_with_the_full_logits_loss_and_gradients(in_tmp, tiny_llama_dir,
                                                                                           lora, monkeypatch):
    dm = datamodule_with(byte_bpe_tokenizer(), write_csv(in_tmp / "d.csv"))
    module = module_on(tiny_llama_dir, dm, lora=lora).train()
    batch = next(iter(dm.train_dataloader()))
    head = module.model.get_output_embeddings()
    rows = []
    handle = head.register_forward_hook(lambda _m, inputs, _o: rows.append(inputs[0].shape))
    loss = module.answer_loss(batch)
    handle.remove()
    answers = int((batch["lm_labels"][:, 1:] != -100).sum())
    assert rows == [torch.Size([answers, 64])]  # the vocabulary projection saw the answer positions only
    loss.backward()
    fast = {n: p.grad.clone() for n, p in module.named_parameters() if p.requires_grad}
    module.zero_grad()
    full = answer_only_lm_loss(module(batch["input_ids"], batch["attention_mask"]), batch["lm_labels"])
    full.backward()
    assert loss.item() == pytest.approx(full.item(), rel=1e-6)
    for name, p in module.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(fast[name], p.grad, atol=1e-6, rtol=1e-5, msg=name)
    # a forward without logits_to_keep gets the full-logits loss
    monkeypatch.setattr("finlight.core.base.forward_accepts", lambda model, argument: False)
    assert module.answer_loss(batch).item() == pytest.approx(full.item(), rel=1e-6)


def test_constrained_scoring_equals_a_hand_computation_from_the_logits(in_tmp, tiny_llama_dir):
    dm = datamodule_with(byte_bpe_tokenizer(), write_csv(in_tmp / "d.csv"))
    module = module_on(tiny_llama_dir, dm)
    assert module.scoring_mode == "first_token"
    batch = next(iter(dm.val_dataloader()))
    with torch.no_grad():
        probs = module.label_probs(batch)
        firsts = [t[0] for t in module.label_token_ids]
        for row in range(len(probs)):
            p = int(batch["prompt_lengths"][row])
            logits = module.model(input_ids=batch["input_ids"][row: row + 1, :p]).logits[0, -1]
            expected = torch.softmax(logits[firsts], -1)
            torch.testing.assert_close(probs[row], expected, atol=1e-5, rtol=1e-4)


def test_multi_token_labels_are_scored_by_their_full_sequence(in_tmp, tiny_llama_dir):
    words = ["Up a lot", "Down", "Flat"]
    dm = InstructionDataModule(path=write_csv(in_tmp / "d.csv"), text_column="Sentence", label_column="Sentiment",
                               label_names=["positive", "negative", "neutral"], label_words=words,
                               split_ratios=(0.5, 0.25, 0.25))
    dm.setup()
    module = module_on(tiny_llama_dir, dm)
    assert module.scoring_mode == "sequence" and max(len(t) for t in module.label_token_ids) > 1
    batch = next(iter(dm.val_dataloader()))
    with torch.no_grad():
        probs = module.label_probs(batch)  # batched, left-padded prompts
        for row in range(len(probs)):
            p = int(batch["prompt_lengths"][row])
            prompt = batch["prompt_ids"][row, -p:].tolist()
            scores = []
            for tokens in module.label_token_ids:  # one unpadded sequence at a time, summed by hand
                ids = torch.tensor([prompt + tokens])
                log_probs = module.model(input_ids=ids).logits[0].log_softmax(-1)
                scores.append(sum(float(log_probs[p - 1 + j, t]) for j, t in enumerate(tokens)))
            torch.testing.assert_close(probs[row], torch.tensor(scores).softmax(-1), atol=1e-4, rtol=1e-3)


def test_multi_token_labels_cost_one_prompt_pass_and_score_as_the_full_sequences(in_tmp, tiny_llama_dir):
    """The prompt's KV cache is reused for all labels: two forward passes (prompts, then every label's tokens after
    its first over the cache repeated k times) give the log-probabilities of one full pass per label."""
    import lightning.pytorch as pl

    words = ["Up a lot", "Down", "Flat"]
    dm = InstructionDataModule(path=write_csv(in_tmp / "d.csv"), text_column="Sentence", label_column="Sentiment",
                               label_names=["positive", "negative", "neutral"], label_words=words,
                               split_ratios=(0.5, 0.25, 0.25))
    dm.setup()
    module = module_on(tiny_llama_dir, dm)
    assert module.scoring_mode == "sequence"
    batch = next(iter(dm.val_dataloader()))
    assert (batch["prompt_mask"] == 0).any() and len(set(batch["prompt_lengths"].tolist())) > 1  # left-padded
    shapes = []
    hook = module.model.register_forward_pre_hook(lambda m, a, kw: shapes.append(tuple(kw["input_ids"].shape)),
                                                  with_kwargs=True)
    with torch.no_grad():
        cached = module._cached_sequence_scores(batch)
        hook.remove()
        full = torch.stack([module._sequence_scores(batch, t) for t in module.label_token_ids], dim=-1)
    n, k, longest = len(batch["prompt_ids"]), len(words), max(len(t) for t in module.label_token_ids)
    assert shapes == [tuple(batch["prompt_ids"].shape), (n * k, longest - 1)]
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=0)

    # validate reports the scoring throughput
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_checkpointing=False,
                         enable_model_summary=False, limit_val_batches=2)
    metrics = trainer.validate(module, datamodule=dm, verbose=False)[0]
    assert metrics["val/scoring_tokens_per_s"] > 0


def test_generate_and_parse_counts_unparseable_answers(in_tmp, tiny_llama_dir):
    """Answers are fixed so the metrics can be computed by hand; unparseable ones are errors, never a class."""
    dm = datamodule_with(byte_bpe_tokenizer(), write_csv(in_tmp / "d.csv"))
    module = module_on(tiny_llama_dir, dm, evaluation="generate", max_new_tokens=3)
    real = module.generate_answers(next(iter(dm.val_dataloader())))
    assert len(real) == dm.hp.batch_size and all(isinstance(a, str) for a in real)

    val_labels = dm.labels["val"]  # 9 examples, 3 per class
    answers = {}
    for i, label in enumerate(val_labels):  # per class: one right, one unparseable, one wrong class
        seen = sum(1 for j in range(i) if val_labels[j] == label)
        answers[i] = [f" {WORDS[label].upper()}.", "I cannot tell", WORDS[(label + 1) % 3]][seen % 3]
    module.generate_answers = lambda batch: [answers[int(i)] for i in batch["index"]]
    import lightning.pytorch as pl

    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    metrics = trainer.validate(module, datamodule=dm, verbose=False)[0]
    assert metrics["val/unparseable_rate"] == pytest.approx(1 / 3)
    assert metrics["val/acc"] == pytest.approx(1 / 3)
    # each class: recall 1/3 (tp 1 of 3), precision 1/2 (tp 1, one wrong-class prediction) → F1 = 0.4
    assert metrics["val/macro_f1"] == pytest.approx(0.4)
    assert metrics["val/recall_positive"] == pytest.approx(1 / 3)
    assert module.confusion["val"].sum() == 6  # unparseable answers are in no predicted column


# ---------------------------------------------------------------------------------------------- adapters
def lora_fit(in_tmp: Path, llama_dir: Path, name: str, **model_args):
    import lightning.pytorch as pl

    dm = InstructionDataModule(path=write_csv(in_tmp / "d.csv"), text_column="Sentence", label_column="Sentiment",
                               label_names=["negative", "neutral", "positive"], label_words=WORDS,
                               split_ratios=(0.5, 0.25, 0.25), batch_size=6)
    module = CausalLMClassifier(backbone=str(llama_dir), learning_rate=5e-3, **model_args)
    trainer = pl.Trainer(accelerator="cpu", max_steps=3, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=1,
                         default_root_dir=str(in_tmp / name),
                         callbacks=[pl.callbacks.ModelCheckpoint(dirpath=str(in_tmp / name), save_last=True)])
    trainer.fit(module, datamodule=dm)
    return module, dm, trainer, str(in_tmp / name / "last.ckpt")


def reload(checkpoint_path: str, llama_dir: Path, **model_args) -> CausalLMClassifier:
    from finlight.core.checkpoints import load_checkpoint

    checkpoint = load_checkpoint(checkpoint_path)  # weights_only: plain data and tensors only
    fresh = CausalLMClassifier(backbone=str(llama_dir), **model_args)
    fresh.on_load_checkpoint(checkpoint)
    fresh.load_state_dict(checkpoint["state_dict"], strict=fresh.strict_loading)
    return fresh.eval()


def test_lora_checkpoint_holds_only_adapters_reloads_exactly_and_exports(in_tmp, tiny_llama_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    lora = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj",
                                                                     "gate_proj", "up_proj", "down_proj"]}
    module, dm, _, path = lora_fit(in_tmp, tiny_llama_dir, "lora", lora=lora)
    state = torch.load(path, weights_only=True)["state_dict"]
    assert state and all(".lora_A." in k or ".lora_B." in k for k in state)
    assert len(state) == 2 * 7 * 2  # A and B × seven projections × two layers
    assert any(float(v.abs().sum()) > 0 for k, v in state.items() if ".lora_B." in k)  # it trained

    batch = next(iter(dm.val_dataloader()))
    module.eval()
    with torch.no_grad():
        trained = module(batch["input_ids"], batch["attention_mask"])
        reloaded = reload(path, tiny_llama_dir, lora=lora)(batch["input_ids"], batch["attention_mask"])
    assert torch.equal(trained, reloaded)

    adapter_dir, merged_dir = in_tmp / "adapter", in_tmp / "merged"
    export_hf(path, str(adapter_dir))
    export_hf(path, str(merged_dir), merged=True)
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= set(os.listdir(adapter_dir))
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, adapter_dir).eval()
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    assert not any("lora" in k for k in merged.state_dict())
    with torch.no_grad():
        args = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        torch.testing.assert_close(peft_model(**args).logits, trained, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(merged(**args).logits, trained, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_lora_training_steps_run_on_cpu_and_reload_exactly(in_tmp, tiny_llama_dir, bits):
    import bitsandbytes as bnb

    options = dict(lora={"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"},
                   quantization={"bits": bits, "compute_dtype": "float32"}, gradient_checkpointing=True)
    module, dm, trainer, path = lora_fit(in_tmp, tiny_llama_dir, f"q{bits}", **options)
    layer = module.model.base_model.model.model.layers[0].self_attn.q_proj.base_layer
    assert isinstance(layer, bnb.nn.Linear4bit if bits == 4 else bnb.nn.Linear8bitLt)
    assert is_checkpointing(module.model.base_model.model)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    state = torch.load(path, weights_only=True)["state_dict"]
    assert state and all(".lora_" in k for k in state)  # no quantized base weights in the file

    # Lightning's moves and casts leave the quantized model alone
    module.to(torch.float64)
    assert layer.weight.dtype in (torch.uint8, torch.int8)
    assert module.model.base_model.model.model.layers[0].self_attn.q_proj.lora_A.default.weight.dtype == torch.float32

    batch = next(iter(dm.val_dataloader()))
    module.eval()
    with torch.no_grad():
        trained = module(batch["input_ids"], batch["attention_mask"])
        reloaded = reload(path, tiny_llama_dir, **options)(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(trained, reloaded, atol=1e-6, rtol=1e-6)


@pytest.mark.gpu
def test_qlora_step_on_gpu(in_tmp, tiny_llama_dir):
    import lightning.pytorch as pl

    dm = InstructionDataModule(path=write_csv(in_tmp / "d.csv"), text_column="Sentence", label_column="Sentiment",
                               label_names=["negative", "neutral", "positive"], label_words=WORDS, batch_size=6)
    module = CausalLMClassifier(backbone=str(tiny_llama_dir), lora={"r": 4, "target_modules": "all-linear"},
                                quantization={"bits": 4, "compute_dtype": "bfloat16"}, gradient_checkpointing=True)
    trainer = pl.Trainer(accelerator="gpu", devices=1, max_steps=2, logger=False, limit_val_batches=1,
                         enable_checkpointing=False, precision="bf16-mixed")
    trainer.fit(module, datamodule=dm)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert next(module.model.parameters()).device.type == "cuda"


# ---------------------------------------------------------------------------------------------- configs via the CLI
def swapped_config(folder: Path, config: str, overrides: dict) -> str:
    """The issue's config with its backbone, data and trainer swapped for tiny local ones."""
    loaded = yaml.safe_load((REPO / "configs" / config).read_text())
    for dotted, value in overrides.items():
        node = loaded
        *parents, last = dotted.split(".")
        for key in parents:
            node = node[key]
        node[last] = value
    path = folder / config
    path.write_text(yaml.safe_dump(loaded))
    return str(path)


TINY_TRAINER = {"trainer.max_epochs": 1, "trainer.precision": "32-true", "trainer.accelerator": "cpu",
                "trainer.enable_progress_bar": False, "trainer.enable_model_summary": False,
                "trainer.accumulate_grad_batches": 1, "trainer.log_every_n_steps": 1}


def test_llama_qlora_config_runs_zero_shot_fit_validate_predict(in_tmp, tiny_llama_dir):
    config = swapped_config(in_tmp, "llama32_3b_qlora_fsa.yaml", {
        **TINY_TRAINER, "model.init_args.backbone": str(tiny_llama_dir), "model.init_args.dtype": "float32",
        "model.init_args.quantization.compute_dtype": "float32", "model.init_args.lora.r": 4,
        "data.init_args.path": write_csv(in_tmp / "fsa.csv", repeat=3), "data.init_args.batch_size": 8,
        "data.init_args.split_ratios": [0.7, 0.15, 0.15]})
    before = run_cli(["validate", "--config", config])  # zero-shot: the untuned model
    assert 0.0 <= float(before.trainer.callback_metrics["val/macro_f1"]) <= 1.0
    run_cli(["fit", "--config", config])
    ckpt = next((in_tmp / "checkpoints" / "llama32_3b_qlora_fsa").glob("version_*/last.ckpt"))
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    assert state and all(".lora_" in k for k in state)
    generated = run_cli(["validate", "--config", config, "--ckpt_path", "last",
                         "--model.init_args.evaluation", "generate"])
    assert 0.0 <= float(generated.trainer.callback_metrics["val/unparseable_rate"]) <= 1.0
    predicted = run_cli(["predict", "--config", config, "--ckpt_path", "last"])
    with open(Path(predicted.trainer.log_dir) / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["text"] for r in rows] == predicted.datamodule.predict_texts
    assert set(rows[0]) == {"text", "label", "answer", "parsed"}
    for row in rows:  # the parsed label is read from the raw answer, or empty when there is none
        assert row["label"] in ("", "negative", "neutral", "positive")
        assert (row["label"] != "") == (row["parsed"] == "True")


def test_phi2_lora_nf4_sequence_classifier_config_runs_and_exports(in_tmp, tiny_phi_dir):
    from transformers import AutoModelForSequenceClassification

    config = swapped_config(in_tmp, "phi2_lora_nf4_sentiment.yaml", {
        **TINY_TRAINER, "model.init_args.backbone": str(tiny_phi_dir), "model.init_args.lora.r": 4,
        "model.init_args.quantization.compute_dtype": "float32",
        "data.init_args.path": write_csv(in_tmp / "pb.csv"), "data.init_args.text_column": "Sentence",
        "data.init_args.label_column": "Sentiment", "data.init_args.batch_size": 8})
    fit = run_cli(["fit", "--config", config])
    model = fit.model.model
    assert model.config.pad_token_id == model.config.eos_token_id  # Phi has no pad token: EOS pads
    ckpt = next((in_tmp / "checkpoints" / "phi2_lora_nf4_sentiment").glob("version_*/last.ckpt"))
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    assert any(".lora_A." in k for k in state) and any("score.modules_to_save" in k for k in state)
    assert all(".lora_" in k or "modules_to_save" in k for k in state)
    tested = run_cli(["test", "--config", config, "--ckpt_path", "last"])
    report = json.loads((Path(tested.trainer.log_dir) / "test_metrics.json").read_text())
    assert 0.0 <= report["metrics"]["test/macro_f1"] <= 1.0
    export_hf(str(ckpt), str(in_tmp / "merged"), merged=True)
    merged = AutoModelForSequenceClassification.from_pretrained(in_tmp / "merged", dtype=torch.float32)
    assert merged.config.num_labels == 3 and not any("lora" in k for k in merged.state_dict())


# ---------------------------------------------------------------------------------------------- real data
@pytest.mark.slow
@pytest.mark.integration
def test_scratch_causal_lm_on_phrasebank_reports_macro_f1_and_unparseable_rate(in_tmp):
    """A tiny from-scratch decoder, one short epoch on PhraseBank AllAgree: the pipeline on real data."""
    config = {
        "seed_everything": 42,
        "trainer": {"max_epochs": 1, "limit_train_batches": 60, "limit_val_batches": 4, "limit_test_batches": 4,
                    "enable_progress_bar": False, "enable_model_summary": False, "deterministic": True},
        "model": {"class_path": "finlight.causal_lm.CausalLMClassifier", "init_args": {
            "scratch": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1,
                        "intermediate_size": 64, "vocab_size": 1500},
            "learning_rate": 3e-3, "evaluation": "generate"}},
        "data": {"class_path": "finlight.causal_lm.InstructionDataModule", "init_args": {
            "path": str(PHRASEBANK_ALL), "label_names": ["negative", "neutral", "positive"],
            "max_length": 96, "batch_size": 16, "eval_batch_size": 32}},
    }
    path = in_tmp / "pb_scratch.yaml"
    path.write_text(yaml.safe_dump(config))
    run_cli(["fit", "--config", str(path)])
    tested = run_cli(["test", "--config", str(path), "--ckpt_path", "last"])
    metrics = tested.trainer.callback_metrics
    # an untrained decoder answers with random tokens (unparseable ≈ 1); 60 steps teach it the answer format
    assert float(metrics["test/unparseable_rate"]) < 0.75
    assert float(metrics["test/macro_f1"]) > 0.0


def test_a_plain_classification_data_module_is_refused_with_a_pointer(in_tmp, tiny_llama_dir):
    import lightning.pytorch as pl

    from finlight.core import ClassificationDataModule
    from finlight.errors import FinlightError

    dm = ClassificationDataModule(path=write_csv(in_tmp / "d.csv"), text_column="Sentence", label_column="Sentiment")
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=1)
    with pytest.raises(FinlightError, match="finlight.causal_lm.InstructionDataModule"):
        trainer.validate(CausalLMClassifier(backbone=str(tiny_llama_dir)), datamodule=dm, verbose=False)


def test_4bit_training_never_takes_the_avx512_packed_layout(in_tmp, tiny_llama_dir, monkeypatch):
    """bitsandbytes repacks a 4-bit weight in place for CPU inference on AVX-512 BF16 CPUs the first time a layer
    runs in eval mode without grad; training after that fails and numbers change (`portable_4bit`). The CPU's
    answer is forced to "yes" so that an AVX2 machine takes the same decision as an AVX-512 one."""
    import bitsandbytes as bnb
    import bitsandbytes.nn.modules as bnb_modules
    import lightning.pytorch as pl

    packed = []

    def record(weight, quant_state):  # stands in for the conversion: records it, changes nothing
        packed.append(weight.shape)
        return weight, quant_state

    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: True)
    monkeypatch.setattr(bnb_modules, "_convert_weight_packed_for_cpu", record)

    control = bnb.nn.Linear4bit(64, 64, compute_dtype=torch.float32, quant_type="nf4").to("cpu")
    control.weight = bnb.nn.Params4bit(torch.randn(64, 64), requires_grad=False, quant_type="nf4")._quantize("cpu")
    with torch.no_grad():
        control.eval()(torch.randn(2, 64))
    assert len(packed) == 1  # the patch reaches bitsandbytes' decision: an unguarded layer would repack

    packed.clear()
    dm = InstructionDataModule(path=write_csv(in_tmp / "d.csv"), text_column="Sentence", label_column="Sentiment",
                               label_names=["negative", "neutral", "positive"], label_words=WORDS,
                               split_ratios=(0.5, 0.25, 0.25), batch_size=6)
    module = CausalLMClassifier(backbone=str(tiny_llama_dir), learning_rate=5e-3,
                                lora={"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"},
                                quantization={"bits": 4, "compute_dtype": "float32"})
    trainer = pl.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=1, enable_checkpointing=False)
    trainer.fit(module, datamodule=dm)  # sanity check, validation after epoch 1, then training again
    trainer.validate(module, datamodule=dm, verbose=False)
    layers = [m for m in module.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and all(not m.support_avx512bf16_for_cpu for m in layers)
    assert packed == []
    assert torch.isfinite(trainer.callback_metrics["val/loss"])

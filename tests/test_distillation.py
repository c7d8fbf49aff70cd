"""Distillation: losses against hand-computed values, PKD layer maps, a frozen teacher that never learns and
never lands in a checkpoint, soft targets from the pseudo-label file, two-stage training, the configs."""

import math
from pathlib import Path

import pytest
import torch

from finlight.cli import run_cli
from finlight.errors import FinlightError
from finlight.core.losses import weighted_cross_entropy
from finlight.distill.losses import distillation_kl, kd_loss, patient_kd_loss
from finlight.distill.student import DistillationStudent, pkd_layer_map
from finlight.distill.teacher import classify_logits, load_classifier
from finlight.distill.pseudo_label import pseudo_label

from helpers import DISTILL_CORPUS as CORPUS, student_args, write_data

REPO = Path(__file__).resolve().parents[1]
LABELS = ["negative", "neutral", "positive"]


def softmax(xs):
    e = [math.exp(x) for x in xs]
    return [v / sum(e) for v in e]


# ---------------------------------------------------------------------------------------------- losses
def test_distillation_kl_is_batch_mean_kl_times_t_squared():
    s = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    t = torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 1.0]])

    def by_hand(T):
        total = 0.0
        for si, ti in zip(s.tolist(), t.tolist()):
            p, q = softmax([x / T for x in ti]), softmax([x / T for x in si])
            total += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
        return total / 2 * T * T

    for T in (1.0, 2.0, 5.0):
        assert distillation_kl(s, t, T).item() == pytest.approx(by_hand(T), rel=1e-5)
    assert by_hand(2.0) != pytest.approx(by_hand(2.0) / 4)  # the T² factor is really there
    assert distillation_kl(t, t, 3.0).item() == pytest.approx(0.0, abs=1e-7)


def test_kd_loss_mixes_soft_and_hard_terms_by_alpha():
    s = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    t = torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 1.0]])
    y = torch.tensor([0, 2])
    ce = (-math.log(softmax([1.0, 0.0, -1.0])[0]) - math.log(softmax([0.5, 0.5, 0.0])[2])) / 2
    soft = distillation_kl(s, t, 2.0).item()
    assert kd_loss(s, t, y, 2.0, 0.3).item() == pytest.approx(0.3 * soft + 0.7 * ce, rel=1e-6)
    assert kd_loss(s, t, y, 2.0, 1.0).item() == pytest.approx(soft, rel=1e-6)
    assert kd_loss(s, t, y, 2.0, 0.0).item() == pytest.approx(weighted_cross_entropy(s, y).item(), rel=1e-6)


def test_patient_kd_loss_sums_layers_of_batch_mean_normalised_distances():
    # layer 1: rows (3,4)·(1,0) → (.6,.8) vs (1,0): .16 + .64 = .8 ; (0,2) vs (0,5): 0 → mean .4
    # layer 2: (1,0) vs (0,1): 2 ; (1,1) vs (-1,-1): 4 → mean 3
    s = [torch.tensor([[3.0, 4.0], [0.0, 2.0]]), torch.tensor([[1.0, 0.0], [1.0, 1.0]])]
    t = [torch.tensor([[1.0, 0.0], [0.0, 5.0]]), torch.tensor([[0.0, 1.0], [-1.0, -1.0]])]
    assert patient_kd_loss(s, t).item() == pytest.approx(3.4, rel=1e-6)
    assert patient_kd_loss(s, t, beta=0.5).item() == pytest.approx(1.7, rel=1e-6)
    assert patient_kd_loss(s[:1], t[:1]).item() == pytest.approx(0.4, rel=1e-6)
    with pytest.raises(ValueError, match="project"):
        patient_kd_loss([torch.zeros(2, 3)], [torch.zeros(2, 4)])


def test_pkd_layer_maps_skip_last_explicit_and_mask_the_last_layer():
    assert pkd_layer_map(12, 6, "skip") == [(1, 2), (2, 4), (3, 6), (4, 8), (5, 10)]
    assert pkd_layer_map(12, 6, "last") == [(1, 7), (2, 8), (3, 9), (4, 10), (5, 11)]
    assert pkd_layer_map(4, 2, "skip") == [(1, 2)] and pkd_layer_map(4, 2, "last") == [(1, 3)]
    for strategy in ("skip", "last"):  # the student's last layer is matched through the logits, never here
        pairs = pkd_layer_map(12, 4, strategy)
        assert len(pairs) == 3 and all(s < 4 and t < 12 for s, t in pairs)
    assert pkd_layer_map(4, 2, {2: 4, 1: 1}) == [(1, 1), (2, 4)]
    with pytest.raises(FinlightError, match="bad"):
        pkd_layer_map(4, 2, {3: 1})
    with pytest.raises(FinlightError, match="at least 2 layers"):
        pkd_layer_map(12, 1, "skip")


# ---------------------------------------------------------------------------------------------- modules
@pytest.mark.slow
def test_pkd_with_online_teacher_freezes_it_and_keeps_it_out_of_checkpoints(tiny_hf_dir, in_tmp):
    write_data(in_tmp)
    pseudo_label(str(tiny_hf_dir), ["corpus"], "pl.jsonl", progress_bar=False)
    cli = run_cli(["fit", *student_args("pkd"), "--model.init_args.loss", "pkd", "--model.init_args.teacher",
                   str(tiny_hf_dir), "--model.init_args.pkd_layers", "{1: 1}", "--model.init_args.beta", "0.5"])
    module = cli.model
    teacher = module.teacher.model
    assert module.pkd_projection.weight.shape == (32, 16)  # student 16 → teacher 32, learned
    assert module.layer_map == [(1, 1)]
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    pristine = load_classifier(str(tiny_hf_dir)).model.state_dict()
    assert all(torch.equal(v, pristine[k]) for k, v in teacher.state_dict().items())  # fit left it untouched
    assert "train/pkd" in cli.trainer.callback_metrics and "val/kl_teacher" in cli.trainer.callback_metrics

    # one more step by hand: the loss reaches student and projection, never the teacher
    batch = next(iter(cli.datamodule.train_dataloader()))
    assert "teacher_input_ids" in batch and "teacher_logits" in batch  # its own tokenizer, soft targets from file
    module.log = lambda *a, **k: None
    module.training_step(batch, 0).backward()
    assert module.pkd_projection.weight.grad.abs().sum() > 0
    assert module.model.bert.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())

    ckpt_path = Path(cli.trainer.checkpoint_callback.best_model_path)
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    keys = set(checkpoint["state_dict"])
    assert keys == set(module.state_dict())
    assert all(k.startswith(("model.", "pkd_projection.")) for k in keys)
    assert checkpoint["state_dict"]["model.bert.embeddings.word_embeddings.weight"].shape[1] == 16  # not 32
    assert sum(v.numel() for v in checkpoint["state_dict"].values()) == sum(p.numel() for p in module.parameters())
    assert checkpoint["finlight"]["distillation"]["projection"] == [16, 32]

    # the checkpoint reloads for test (projection rebuilt from the record) and reports KL to the teacher
    test = run_cli(["test", *student_args("pkd"), "--model.init_args.loss", "pkd", "--model.init_args.teacher",
                    str(tiny_hf_dir), "--model.init_args.pkd_layers", "{1: 1}", "--ckpt_path", str(ckpt_path)])
    assert test.trainer.callback_metrics["test/kl_teacher"] >= 0
    assert torch.equal(test.model.pkd_projection.weight, checkpoint["state_dict"]["pkd_projection.weight"])


@pytest.mark.slow
def test_kd_from_file_then_stage_two_from_the_stage_one_checkpoint(tiny_hf_dir, in_tmp):
    write_data(in_tmp)
    pseudo_label(str(tiny_hf_dir), ["corpus"], "pl.jsonl", progress_bar=False)
    stage1 = run_cli(["fit", *student_args("kd"), "--model.init_args.loss", "kd",
                      "--model.init_args.temperature", "5"])
    assert stage1.model.teacher is None  # soft targets came from the file: no teacher forward
    data = stage1.datamodule
    assert len(data.splits["train"]) == len(CORPUS) and data.train_texts[0] == CORPUS[0]
    batch = next(iter(data.train_dataloader()))
    assert torch.equal(batch["teacher_logits"], data.teacher_logits["train"][batch["index"]])
    assert "train/kd" in stage1.trainer.callback_metrics
    first = stage1.trainer.checkpoint_callback.best_model_path

    # the stage-1 checkpoint is a finlight classifier: loadable as a (frozen) teacher, identical logits
    as_teacher = load_classifier(first)
    assert as_teacher.identity["kind"] == "finlight-checkpoint" and as_teacher.label_names == LABELS
    stage1.model.eval()
    enc = stage1.model.tokenizer(CORPUS[:3], return_tensors="pt", padding=True)
    expected = stage1.model(enc["input_ids"], enc["attention_mask"])
    assert torch.allclose(classify_logits(as_teacher.model, as_teacher.tokenizer, CORPUS[:3]), expected, atol=1e-5)

    # init_from: architecture, tokenizer and weights come from stage 1 (not a tokenizer learnt on stage-2 data)
    student = DistillationStudent(loss="ce", init_from=first, scratch={"hidden_size": 16})
    student.setup("fit")
    weights = torch.load(first, map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.equal(v, weights[f"model.{k}"]) for k, v in student.model.state_dict().items())
    assert student.tokenizer.get_vocab() == stage1.model.tokenizer.get_vocab()
    with pytest.raises(FinlightError, match="init_from.*labels"):
        DistillationStudent(loss="ce", init_from=first, scratch={}, label_names=["positive", "neutral", "negative"]).setup("fit")

    stage2 = run_cli(["fit", *student_args("kd_stage2", pseudo=False), "--model.init_args.loss", "ce",
                      "--model.init_args.init_from", "kd:best"])
    assert len(stage2.datamodule.splits["train"]) < len(CORPUS)  # the labelled train split this time
    assert stage2.model.tokenizer.get_vocab() == stage1.model.tokenizer.get_vocab()


def test_kd_without_soft_targets_and_pkd_without_teacher_are_refused(tiny_hf_dir):
    with pytest.raises(FinlightError, match="pkd needs model.teacher"):
        DistillationStudent(loss="pkd", scratch={})
    with pytest.raises(FinlightError, match="alpha"):
        DistillationStudent(loss="kd", alpha=1.5, scratch={})
    module = DistillationStudent(loss="kd", backbone=str(tiny_hf_dir), label_names=LABELS)
    module.setup("fit")
    batch = {"input_ids": torch.tensor([[2, 5, 3]]), "attention_mask": torch.ones(1, 3, dtype=torch.long),
             "labels": torch.tensor([0])}
    with pytest.raises(FinlightError, match="soft targets"):
        module.training_step(batch, 0)


@pytest.mark.parametrize("name", ["distill_finbert_albert_ce", "distill_finbert_albert_kd_t2",
                                  "distill_finbert_albert_kd_t5", "distill_finbert_albert_kd_t9",
                                  "distill_finbert_albert_pkd", "albert_fresh_phrasebank"])
def test_configs_parse_and_name_their_command(name, capsys):
    path = REPO / "configs" / f"{name}.yaml"
    assert path.read_text().startswith(f"# python -m finlight fit --config configs/{name}.yaml")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["fit", "--config", str(path), "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "albert-base-v2" in printed and "Sentences_AllAgree.txt" in printed
    if name.startswith("distill"):
        assert "DistillationStudent" in printed
        expected = {"ce": "loss: ce", "kd_t2": "temperature: 2.0", "kd_t5": "temperature: 5.0",
                    "kd_t9": "temperature: 9.0", "pkd": "teacher: ProsusAI/finbert"}[name.split("albert_")[1]]
        assert expected in printed


@pytest.mark.slow
def test_kd_student_resumes_after_a_crash_to_the_same_result(tiny_hf_dir, in_tmp):
    from conftest import InterruptAtEpoch  # noqa: F401  (used by class_path below)

    write_data(in_tmp)
    pseudo_label(str(tiny_hf_dir), ["corpus"], "pl.jsonl", progress_bar=False)
    kd = ["--model.init_args.loss", "kd", "--model.init_args.temperature", "2"]
    straight = run_cli(["fit", *student_args("straight", epochs=3), *kd]).trainer.callback_metrics
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_cli(["fit", *student_args("crashed", epochs=3), *kd,
                 "--trainer.callbacks+=conftest.InterruptAtEpoch", "--trainer.callbacks.epoch=2"])
    resumed = run_cli(["fit", *student_args("crashed", epochs=3), *kd, "--ckpt_path", "last"])
    assert resumed.trainer.current_epoch == 3
    for key in ("val/loss", "val/macro_f1"):
        assert float(resumed.trainer.callback_metrics[key]) == pytest.approx(float(straight[key]), abs=1e-6), key

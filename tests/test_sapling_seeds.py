"""benchmarks/sapling_seeds.py: each variant's config and the honest choice of the checkpoint to test."""

import pytest
import torch
import yaml

from finlight.cli import run_cli


@pytest.fixture
def seeds_module(monkeypatch, request):
    monkeypatch.syspath_prepend(str(request.config.rootpath / "benchmarks"))
    import sapling_seeds

    return sapling_seeds


def base_config(request) -> dict:
    return yaml.safe_load((request.config.rootpath / "configs" / "sapling_bert_phrasebank.yaml").read_text())


def test_variant_configs_change_only_the_method_or_the_depth(seeds_module, request, in_tmp, capsys):
    base = base_config(request)
    for method in ("ablation", "block_influence", "angular_distance", "angular_distance_n2"):
        config = seeds_module.variant_config(base, method, 2)
        args = config["trainer"]["callbacks"][-1]["init_args"]
        assert args["method"] == method.split("_n")[0] and args["angular_n"] == (2 if method.endswith("n2") else 1)
        assert args["target_layers"] == 2 and args["tolerance"] == 1.0  # always reaches the target depth
        assert config["model"] == base["model"] and config["data"] == base["data"]
    direct = seeds_module.variant_config(base, "direct", 2)
    assert direct["trainer"]["callbacks"] == [] and direct["model"]["init_args"]["scratch"]["num_layers"] == 2
    assert seeds_module.variant_config(base, "full", 2)["model"] == base["model"]
    assert base["trainer"]["callbacks"][0]["init_args"]["method"] == "ablation"  # the base is not modified
    with pytest.raises(SystemExit, match="unknown variant"):
        seeds_module.variant_config(base, "random", 2)
    # each written variant is a valid finlight config
    path = in_tmp / "direct.yaml"
    path.write_text("# python -m finlight fit --config direct.yaml\n" + yaml.safe_dump(direct))
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["fit", "--config", str(path), "--print_config"])
    assert exit_info.value.code == 0, capsys.readouterr().err


def test_the_tested_checkpoint_is_the_best_at_the_target_depth(seeds_module, tmp_path):
    def save(name, layers, score):
        state = {f"model.bert.encoder.layer.{i}.output.dense.weight": torch.zeros(1) for i in range(layers)}
        torch.save({"state_dict": state, "callbacks": {"RunCheckpoint{}": {"current_score": torch.tensor(score)}}},
                   tmp_path / name)

    save("epoch00-val_macro_f10.9000.ckpt", 3, 0.9)  # the overall best is deeper: not a 2-layer result
    save("epoch01-val_macro_f10.6000.ckpt", 2, 0.6)
    save("epoch02-val_macro_f10.7000.ckpt", 2, 0.7)
    save("epoch03-val_macro_f10.6500.ckpt", 2, 0.65)
    path, depth, score = seeds_module.select_checkpoint(str(tmp_path), 2)
    assert path.endswith("epoch02-val_macro_f10.7000.ckpt") and depth == 2 and score == pytest.approx(0.7)
    # a run that never reached the target: its shallowest depth, reported as such
    path, depth, _ = seeds_module.select_checkpoint(str(tmp_path), 1)
    assert depth == 2 and path.endswith("epoch02-val_macro_f10.7000.ckpt")

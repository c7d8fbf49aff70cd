"""Mixed INT8 (finlight.deploy.int8_sensitivity): KL and the choice of k by hand, the ranking on a real (tiny)
graph quantizes one node at a time, the kept nodes stay fp32, and export-onnx checks and records the names."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from conftest import SENTENCES
from finlight.deploy.int8_sensitivity import Sensitivity, candidate_nodes, choose_keep_fp32, mean_kl, pick_k, rank_nodes
from finlight.errors import FinlightError

TEXTS = [t for ts in SENTENCES.values() for t in ts]


def test_mean_kl_by_hand():
    reference = np.log(np.array([[0.5, 0.25, 0.25], [0.2, 0.3, 0.5]]))
    logits = np.log(np.array([[0.25, 0.5, 0.25], [0.2, 0.3, 0.5]])) + 3.0  # a shift changes no probability
    # row 1: 0.5 ln 2 + 0.25 ln 0.5 + 0 = 0.25 ln 2; row 2: 0
    assert math.isclose(mean_kl(reference, logits), 0.125 * math.log(2), rel_tol=1e-9)
    assert mean_kl(reference, reference) == pytest.approx(0.0, abs=1e-12)


def test_pick_k_smallest_reaching_else_best():
    assert pick_k({0: 0.990, 2: 0.996, 4: 0.997}, 0.995) == (2, True)
    assert pick_k({0: 0.990, 2: 0.993, 4: 0.993}, 0.995) == (2, False)  # the best, the smaller on a tie
    with pytest.raises(FinlightError, match="empty"):
        pick_k({}, 0.995)


@pytest.fixture(scope="module")
def graph(tiny_hf_dir, tmp_path_factory):
    from transformers import AutoConfig, AutoTokenizer

    from finlight.deploy.onnx import export_onnx, length_sorted_feeds

    out = tmp_path_factory.mktemp("mixed") / "onnx"
    export_onnx(str(tiny_hf_dir), str(out), first_token_last_layer=False)  # its one layer fused, Attention included
    config, tokenizer = AutoConfig.from_pretrained(tiny_hf_dir), AutoTokenizer.from_pretrained(tiny_hf_dir)
    return str(out / "model.onnx"), config, length_sorted_feeds(tokenizer, TEXTS, 64, batch_size=8)


def test_ranking_quantizes_one_node_at_a_time_and_kept_nodes_stay_fp32(graph, tmp_path):
    import onnx

    from finlight.deploy.onnx import _run_feeds, _session, quantize_int8

    fp32, config, feeds = graph
    nodes = candidate_nodes(fp32)
    types = {n.name: n.op_type for n in onnx.load(fp32).graph.node}
    assert {types[n] for n in nodes} >= {"MatMul", "Attention"} and len(nodes) >= 4
    written = []

    def quantize(src, dst, only, exclude):
        quantize_int8(src, dst, "dynamic-per-channel", config, keep_fp32=exclude, only=only)
        written.append((only, exclude, [(n.op_type, n.name) for n in onnx.load(dst).graph.node]))

    def run(path):
        return _run_feeds(_session(path, 1), feeds)

    ranking = rank_nodes(fp32, quantize, run, nodes)
    assert sorted(s.node for s in ranking) == sorted(nodes)
    assert [s.kl for s in ranking] == sorted((s.kl for s in ranking), reverse=True) and ranking[0].kl > 0
    for only, _, ops in written:  # exactly one node became integer: the MatMul it names, or a QAttention
        (node,) = only
        assert not any(name == node for _, name in ops), node  # the fp32 node was replaced …
        integer = [op for op, _ in ops if op in ("MatMulInteger", "QAttention", "DynamicQuantizeMatMul",
                                                  "QEmbedLayerNormalization")]
        assert len(integer) == 1, (node, integer)  # … by one integer operator

    written.clear()
    choice = choose_keep_fp32(fp32, ranking, quantize, run, target=1.0, ks=(0, 2))
    assert set(choice.grid) <= {0, 2} and 0 in choice.grid
    assert choice.k == len(choice.keep_fp32) and choice.keep_fp32 == [s.node for s in ranking[:choice.k]]
    assert choice.reached == (choice.grid[choice.k] >= 1.0)
    assert choice.record()["grid"] == {str(k): v for k, v in sorted(choice.grid.items())}
    kept = [s.node for s in ranking[:2]]
    quantize(fp32, str(tmp_path / "keep2.onnx"), None, kept)
    names = {name for _, name in written[-1][2]}
    assert set(kept) <= names  # the kept nodes are still there, unquantized


def test_choose_keep_fp32_refuses_a_bad_target(graph):
    fp32, _, _ = graph
    with pytest.raises(FinlightError, match="target 1.5"):
        choose_keep_fp32(fp32, [Sensitivity("x", 0.1, 0)], lambda *a: None, lambda p: np.zeros((1, 3)), 1.5)


def test_export_onnx_keeps_named_nodes_fp32_and_checks_names(tiny_hf_dir, graph, tmp_path, capsys):
    import onnx

    from finlight.cli import main

    fp32, _, _ = graph
    matmuls = [n for n in candidate_nodes(fp32, ["MatMul"])][:2]
    out = tmp_path / "onnx"
    main(["export-onnx", "--model", str(tiny_hf_dir), "--output_dir", str(out), "--int8", "--int8_recipe",
          "dynamic-per-channel", "--int8_keep_fp32", ",".join(matmuls), "--no_first_token_last_layer"])
    manifest = json.loads((out / "finlight_onnx.json").read_text())
    assert manifest["int8_keep_fp32"] == matmuls
    nodes = {n.name: n.op_type for n in onnx.load(str(out / "model.int8.onnx")).graph.node}
    assert all(nodes.get(m) == "MatMul" for m in matmuls)  # same names, still float MatMuls
    assert "MatMulInteger" in nodes.values() or "DynamicQuantizeMatMul" in nodes.values()
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["export-onnx", "--model", str(tiny_hf_dir), "--output_dir", str(tmp_path / "o2"), "--int8",
              "--int8_recipe", "dynamic-per-channel", "--int8_keep_fp32", "no/such/node"])
    err = capsys.readouterr().err
    assert "--int8_keep_fp32: 1 of 1 names" in err and "'no/such/node'" in err
    assert not (tmp_path / "o2").exists()  # nothing half-written left behind: the same --output_dir works again

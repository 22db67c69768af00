"""CxC evaluation (VSE∞ protocol) on a small fixture written in the CxC annotation format."""

import json

import numpy as np
import pytest
import torch

from lib.data import DataError
from lib.evaluation.cxc import MISS, best_positive_ranks, cxc_intra, cxc_metrics, load_cxc

N_IMG = 4
IMAGE_IDS = ["101", "102", "103", "104"]
CAPTION_IDS = [str(1000 + c) for c in range(5 * N_IMG)]


def _write_fixture(folder, i2t, t2i, i2i, t2t):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "testall_ids.txt").write_text("".join(f"{i}\n" for i in IMAGE_IDS for _ in range(5)))
    (folder / "testall_capids.txt").write_text("".join(f"{c}\n" for c in CAPTION_IDS))
    (folder / "cxc_it.json").write_text(json.dumps({"i2t": i2t, "t2i": t2i}))
    (folder / "cxc_i2i.json").write_text(json.dumps(i2i))
    (folder / "cxc_t2t.json").write_text(json.dumps(t2t))
    return folder


def _coco_positives():
    """The COCO pairs: image i <-> captions 5i..5i+4."""
    i2t = {img: [[int(CAPTION_IDS[5 * i + j]), 5.0] for j in range(5)]
           for i, img in enumerate(IMAGE_IDS)}
    t2i = {cap: [[int(IMAGE_IDS[c // 5]), 5.0]] for c, cap in enumerate(CAPTION_IDS)}
    return i2t, t2i


def _reference_rank(row, positives):
    """VSE∞'s rule: best position of a positive in the descending sort."""
    order = np.argsort(-row, kind="stable")
    return min(int(np.where(order == p)[0][0]) for p in positives) if positives else MISS


def test_inter_modal_recall_by_hand(tmp_path):
    i2t, t2i = _coco_positives()
    i2t["104"].append([int(CAPTION_IDS[0]), 4.0])  # CxC adds caption 0 as a positive of image 3
    folder = _write_fixture(tmp_path / "cxc", i2t, t2i, {}, {})
    sims = torch.zeros(N_IMG, 5 * N_IMG)
    for i in range(N_IMG):
        sims[i, 5 * i:5 * i + 5] = 0.5  # its own captions
    sims[0, 19] = 0.9   # image 0 ranks caption 19 above its own: rank 1
    sims[3, 0] = 0.7    # image 3: its CxC positive caption 0 beats its own captions (0.5) ...
    sims[3, 1] = 0.8    # ... but caption 1 (image 0's) is above it: rank 1
    sims[1, :] = -1.0   # image 1 ranks everything equal: the first of its captions (5) is at 5
    sims[1, 5:10] = -1.0
    annots = load_cxc(folder, N_IMG, 5 * N_IMG)
    metrics = cxc_metrics(sims, annots)
    # i2t ranks: image 0 -> 1, image 1 -> 5 (five ties before column 5), image 2 -> 0, image 3 -> 1
    assert metrics["cxc_i2t_r1"] == pytest.approx(25.0)
    assert metrics["cxc_i2t_r5"] == pytest.approx(75.0)
    assert metrics["cxc_i2t_r10"] == pytest.approx(100.0)
    t2i_ranks = [_reference_rank(sims[:, c].numpy(), [c // 5]) for c in range(5 * N_IMG)]
    for k in (1, 5, 10):
        assert metrics[f"cxc_t2i_r{k}"] == pytest.approx(100 * np.mean(np.array(t2i_ranks) < k))
    assert "cxc_i2i_r1" not in metrics  # no global vectors: inter-modal only


def test_matches_the_reference_algorithm_on_random_scores(tmp_path):
    rng = np.random.default_rng(0)
    sims = torch.from_numpy(rng.standard_normal((N_IMG, 5 * N_IMG)).astype(np.float32))
    i2t, t2i = _coco_positives()
    t2i[CAPTION_IDS[7]].append([int(IMAGE_IDS[3]), 3.5])
    i2t["103"] = [[999999, 5.0]]  # a positive outside the split: this query is a miss
    annots = load_cxc(_write_fixture(tmp_path, i2t, t2i, {}, {}), N_IMG, 5 * N_IMG)
    metrics = cxc_metrics(sims, annots)
    assert cxc_metrics(sims, annots)["cxc_i2t_r10"] == pytest.approx(75.0)  # image 2 misses
    i2t_pos = [[5 * i + j for j in range(5)] for i in range(N_IMG)]
    i2t_pos[2] = []
    t2i_pos = [[c // 5] for c in range(5 * N_IMG)]
    t2i_pos[7].append(3)
    for name, matrix, pos in (("i2t", sims, i2t_pos), ("t2i", sims.t(), t2i_pos)):
        ranks = np.array([_reference_rank(matrix[q].numpy(), p) for q, p in enumerate(pos)])
        for k in (1, 5, 10):
            assert metrics[f"cxc_{name}_r{k}"] == pytest.approx(100 * np.mean(ranks < k))


def test_intra_modal_recall_with_thresholds():
    vectors = torch.eye(3)
    vectors[1] = torch.tensor([0.8, 0.6, 0.0])  # image 1 is close to image 0
    annot = {"a": [["b", 2.6]], "b": [["a", 2.0]], "c": [["a", 3.0], ["b", 3.0]]}
    # a: positive b (2.6 >= 2.5), nearest -> rank 0; b: no positive (2.0 < 2.5) -> skipped;
    # c: positives a and b, both at similarity 0 like the zeroed diagonal; a is first -> rank 0
    assert cxc_intra(vectors, ["a", "b", "c"], annot, text=False) == (100.0, 100.0, 100.0)
    scores = torch.tensor([[0.0, 0.9, 0.1]])
    assert best_positive_ranks(scores, [[2]]).tolist() == [1]
    assert best_positive_ranks(scores, [[]]).tolist() == [MISS]


def test_text_queries_count_the_other_captions_of_their_image():
    torch.manual_seed(0)
    vectors = torch.nn.functional.normalize(torch.randn(10, 8), dim=1)
    ids = [str(i) for i in range(10)]
    r1, _, r10 = cxc_intra(vectors, ids, {}, text=True)
    sims = (vectors @ vectors.t()).fill_diagonal_(0).numpy()
    ranks = [_reference_rank(sims[i], [j for j in range(i // 5 * 5, i // 5 * 5 + 5) if j != i])
             for i in range(10)]
    assert r1 == pytest.approx(100 * np.mean(np.array(ranks) < 1)) and r10 == 100.0


def test_bad_annotation_folder_is_named(tmp_path):
    with pytest.raises(DataError, match="CxC annotation missing: .*testall_ids.txt"):
        load_cxc(tmp_path, N_IMG, 5 * N_IMG)
    i2t, t2i = _coco_positives()
    folder = _write_fixture(tmp_path / "cxc", i2t, t2i, {}, {})
    with pytest.raises(DataError, match="one line per caption \\(25000\\), found 20"):
        load_cxc(folder, 5000, 25000)
    (folder / "cxc_it.json").write_text("{not json")
    with pytest.raises(DataError, match="cxc_it.json: not a readable CxC JSON"):
        load_cxc(folder, N_IMG, 5 * N_IMG)
    del t2i[CAPTION_IDS[3]]
    _write_fixture(folder, i2t, t2i, {}, {})
    with pytest.raises(DataError, match="no entry for query id 1003"):
        cxc_metrics(torch.zeros(N_IMG, 5 * N_IMG), load_cxc(folder, N_IMG, 5 * N_IMG))


def test_eval_cli_reports_cxc(tiny_toy, tmp_path, capsys):
    """eval.py --cxc on a global-coding model: inter-modal recalls from the score matrix it
    saved, intra-modal ones from its vectors; --results gives the same inter-modal values."""
    import eval as eval_cli
    import train as train_cli

    run = tmp_path / "run"
    train_cli.main(["--config", "vse", "--data_path", str(tiny_toy / "toy"), "--text_enc_type",
                    "bigru", "--embed_size", "64", "--word_dim", "32", "--batch_size", "32",
                    "--workers", "0", "--num_epochs", "1", "--model_name", str(run),
                    "--no_progress"])
    n_img = 20
    ids = [str(500 + i) for i in range(n_img)]
    caps = [str(9000 + c) for c in range(5 * n_img)]
    folder = tmp_path / "cxc"
    folder.mkdir()
    (folder / "testall_ids.txt").write_text("".join(f"{i}\n" for i in ids for _ in range(5)))
    (folder / "testall_capids.txt").write_text("".join(f"{c}\n" for c in caps))
    i2t = {img: [[caps[5 * i + j], 5.0] for j in range(5)] for i, img in enumerate(ids)}
    t2i = {cap: [[ids[c // 5], 5.0]] for c, cap in enumerate(caps)}
    (folder / "cxc_it.json").write_text(json.dumps({"i2t": i2t, "t2i": t2i}))
    (folder / "cxc_i2i.json").write_text(json.dumps({ids[0]: [[ids[1], 3.0]]}))
    (folder / "cxc_t2t.json").write_text(json.dumps({}))
    sims_file = tmp_path / "sims.npy"
    metrics = eval_cli.main(["--model_path", str(run / "model_best.pth"), "--split", "test",
                             "--cxc", str(folder), "--save_results", str(sims_file),
                             "--no_progress"])
    assert "CxC i2t:" in capsys.readouterr().out
    sims = np.load(sims_file, allow_pickle=True).item()["sims"]
    expected = cxc_metrics(torch.from_numpy(sims), load_cxc(folder, n_img, 5 * n_img))
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value)
    # with only COCO's own pairs as positives, CxC inter-modal recall is the plain recall
    assert metrics["cxc_t2i_r5"] == pytest.approx(metrics["r5i"])
    assert {"cxc_i2i_r1", "cxc_t2t_r10"} <= set(metrics)
    from_results = eval_cli.main(["--results", str(sims_file), "--cxc", str(folder)])
    assert from_results["cxc_i2t_r1"] == pytest.approx(metrics["cxc_i2t_r1"])
    assert "cxc_i2i_r1" not in from_results  # no vectors in a score file

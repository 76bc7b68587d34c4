"""The literature KD terms (issue 22): DIST, boundary / body KD, pixel-relation KD, each
against values computed by hand on tiny tensors, with masking, gradients and the recipe."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

from compress.config import ConfigError, load_config
from compress.losses import (
    Distiller,
    TaskLoss,
    boundary_kd,
    dist_kd,
    gather_pixels,
    kd_kl_map,
    label_edges,
    relation_kd,
    sample_pixels,
    valid_mask,
)
from tests.conftest import REPO, tiny_config


def _softmax(v, T=1.0):
    e = [math.exp(x / T) for x in v]
    return [x / sum(e) for x in e]


def _pearson(a, b):
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    num = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    return num / (math.sqrt(sum((x - ma) ** 2 for x in a) * sum((y - mb) ** 2 for y in b)) + 1e-8)


def _hand_dist(s, t, keep, T, beta, gamma):
    """DIST written out with Python lists: per kept pixel the class distribution."""
    n, c, h, w = s.shape
    pix = [(i, y, x) for i in range(n) for y in range(h) for x in range(w) if keep[i, y, x]]
    ps = [_softmax([float(s[i, k, y, x]) for k in range(c)], T) for i, y, x in pix]
    pt = [_softmax([float(t[i, k, y, x]) for k in range(c)], T) for i, y, x in pix]
    inter = 1 - sum(_pearson(a, b) for a, b in zip(ps, pt)) / len(pix)
    intra = 1 - sum(_pearson([p[k] for p in ps], [p[k] for p in pt]) for k in range(c)) / c
    return T * T * (beta * inter + gamma * intra)


# ---------------------------------------------------------------- DIST


def test_dist_two_classes_by_hand():
    """With 2 classes a pixel's centred distribution is +-(p0 - 1/2): its Pearson with the
    teacher's is +1 where both favour the same class, -1 otherwise. 3 agree, 1 does not:
    inter = 1 - (3 - 1) / 4 = 0.5. Intra: both class columns give the Pearson of p0."""
    s = torch.tensor([[[2.0, 1.0], [0.0, -1.0]], [[0.0, 0.0], [1.0, 0.0]]])[None]  # 1x2x2x2
    t = torch.tensor([[[3.0, 0.5], [0.0, 1.0]], [[0.0, 0.0], [2.0, 0.0]]])[None]
    # pixel (0,0): s, t favour class 0; (0,1): both 0; (1,0): both 1; (1,1): s 0, t 1
    mask = torch.ones(1, 1, 2, 2)
    p0_s = torch.sigmoid(s[0, 0] - s[0, 1]).flatten().numpy()
    p0_t = torch.sigmoid(t[0, 0] - t[0, 1]).flatten().numpy()
    r = np.corrcoef(p0_s, p0_t)[0, 1]
    got_inter = dist_kd(s, t, mask, 1.0, beta=1.0, gamma=0.0)
    got_intra = dist_kd(s, t, mask, 1.0, beta=0.0, gamma=1.0)
    assert got_inter.item() == pytest.approx(0.5, abs=1e-6)
    assert got_intra.item() == pytest.approx(1 - r, rel=1e-5)


@pytest.mark.parametrize("T", [1.0, 3.0])
def test_dist_matches_hand_computation_with_masked_pixels(T):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 3, 3, generator=g) * 2
    target = torch.randint(0, 4, (2, 3, 3), generator=g)
    target[0, 0] = 255
    target[1, :, 2] = 255
    mask = valid_mask(target, 255)
    keep = target != 255
    got = dist_kd(s, t, mask, T, beta=0.7, gamma=1.3)
    assert got.item() == pytest.approx(_hand_dist(s, t, keep, T, 0.7, 1.3), rel=1e-5)
    assert dist_kd(s, s, mask, T).item() == pytest.approx(0.0, abs=1e-4)  # float32 * T^2


def test_dist_ignored_pixels_get_no_gradient_and_change_nothing():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(1, 3, 4, 4, generator=g, requires_grad=True)
    t = torch.randn(1, 3, 4, 4, generator=g)
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[..., :, 0] = 255
    mask = valid_mask(target, 255)
    loss = dist_kd(s, t, mask, 2.0)
    loss.backward()
    assert torch.all(s.grad[..., :, 0] == 0) and s.grad[..., :, 1:].abs().sum() > 0
    t2 = t.clone()
    t2[..., :, 0] = 50.0
    assert dist_kd(s, t2, mask, 2.0).item() == pytest.approx(loss.item(), rel=1e-6)
    none = dist_kd(s, t, torch.zeros_like(mask))
    assert none.item() == 0.0


def test_dist_binary_logit_and_class_map():
    z_s, z_t = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    mask = torch.ones(2, 1, 4, 4)
    two = dist_kd(torch.cat([torch.zeros_like(z_s), z_s], 1),
                  torch.cat([torch.zeros_like(z_t), z_t], 1), mask, 2.0)
    assert dist_kd(z_s, z_t, mask, 2.0).item() == pytest.approx(two.item(), rel=1e-6)
    cm = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])  # 3 teacher -> 2 student classes
    s, t = torch.randn(1, 2, 4, 4), torch.randn(1, 3, 4, 4)
    mapped = torch.log(torch.einsum("nthw,ts->nshw", t.softmax(1), cm))  # T = 1
    assert dist_kd(s, t, mask[:1], 1.0, class_map=cm).item() == pytest.approx(
        dist_kd(s, mapped, mask[:1], 1.0).item(), rel=1e-5)


# ---------------------------------------------------------------- boundary


LABELS = torch.tensor([[[0, 0, 1, 1],
                        [0, 0, 1, 1],
                        [0, 0, 1, 1],
                        [2, 2, 255, 255]]])
BAND = torch.tensor([[[0, 1, 1, 0],  # another class in the 3x3 window; 255 is no class
                      [0, 1, 1, 0],
                      [1, 1, 1, 0],
                      [1, 1, 1, 0]]]).float()


def test_label_edges_drawn_by_hand():
    assert torch.equal(label_edges(LABELS, 1, 255)[:, 0], BAND)
    strip = torch.tensor([[[0, 0, 0, 0, 1, 1, 1, 1]]])
    assert label_edges(strip, 1)[0, 0, 0].tolist() == [0, 0, 0, 1, 1, 0, 0, 0]
    assert label_edges(strip, 2)[0, 0, 0].tolist() == [0, 0, 1, 1, 1, 1, 0, 0]


def test_boundary_kd_means_each_region_by_hand():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(1, 3, 4, 4, generator=g), torch.randn(1, 3, 4, 4, generator=g)
    mask = valid_mask(LABELS, 255)
    edges = label_edges(LABELS, 1, 255)
    T = 2.0
    band, body = [], []
    for y in range(4):
        for x in range(4):
            if LABELS[0, y, x] == 255:
                continue
            ps, pt = _softmax(s[0, :, y, x].tolist(), T), _softmax(t[0, :, y, x].tolist(), T)
            kl = sum(a * math.log(a / b) for a, b in zip(pt, ps)) * T * T
            (band if BAND[0, y, x] else body).append(kl)
    assert (len(band), len(body)) == (9, 5)
    want = 3.0 * sum(band) / 9 + 0.5 * sum(body) / 5
    got = boundary_kd(s, t, mask, edges, T, edge_weight=3.0, body_weight=0.5)
    assert got.item() == pytest.approx(want, rel=1e-5)
    # equal weights are NOT plain KD: each region is normalised by its own pixel count
    kl = kd_kl_map(s, t, T)
    assert boundary_kd(s, t, mask, edges, T, 1.0, 1.0).item() != pytest.approx(
        (kl * mask).sum().item() / 14, rel=1e-3)


def test_boundary_term_in_the_distiller_labels_and_teacher_sources():
    g = torch.Generator().manual_seed(2)
    s = torch.randn(1, 3, 4, 4, generator=g, requires_grad=True)
    t = torch.randn(1, 3, 4, 4, generator=g)
    d = Distiller(task=TaskLoss(), w_task=0.0, w_boundary=2.0, boundary_temperature=2.0,
                  boundary_edge_weight=3.0, boundary_body_weight=0.5)
    terms = d(s, LABELS, t)
    mask = valid_mask(LABELS, 255)
    want = boundary_kd(s, t, mask, label_edges(LABELS, 1, 255), 2.0, 3.0, 0.5)
    torch.testing.assert_close(terms["boundary"], want)
    torch.testing.assert_close(terms["loss"], 2.0 * want)
    terms["loss"].backward()
    assert torch.all(s.grad[..., 3, 2:] == 0)  # the ignored pixels
    # source: teacher: the edges of the teacher's argmax (a vertical split here)
    t_split = torch.zeros(1, 3, 4, 4)
    t_split[:, 0, :, :2] = 5.0
    t_split[:, 1, :, 2:] = 5.0
    d_t = Distiller(task=TaskLoss(), w_task=0.0, w_boundary=1.0, boundary_source="teacher")
    split_edges = label_edges(t_split.argmax(1), 1)
    assert split_edges[0, 0].sum() == 8  # columns 1 and 2
    want_t = boundary_kd(s, t_split, mask, split_edges, 4.0)
    torch.testing.assert_close(d_t(s, LABELS, t_split)["boundary"], want_t)


def test_boundary_binary_logit():
    z_s, z_t = torch.randn(1, 1, 4, 4), torch.randn(1, 1, 4, 4)
    target = (torch.arange(16).view(1, 4, 4) % 4 >= 2).long()
    d = Distiller(task=TaskLoss(), w_task=0.0, w_boundary=1.0)
    two = Distiller(task=TaskLoss(), w_task=0.0, w_boundary=1.0)(
        torch.cat([torch.zeros_like(z_s), z_s], 1), target,
        torch.cat([torch.zeros_like(z_t), z_t], 1))
    torch.testing.assert_close(d(z_s, target, z_t)["boundary"], two["boundary"])


# ---------------------------------------------------------------- relation


def _kl_rows(sim_t, sim_s, T):
    rows = [sum(a * math.log(a / b) for a, b in zip(_softmax(rt, T), _softmax(rs, T)))
            for rt, rs in zip(sim_t, sim_s)]
    return sum(rows) / len(rows)


def test_relation_three_pixels_by_hand():
    # one image, 3 pixels in a row, 2 channels; cosine similarities written out
    s = torch.tensor([[[[1.0, 0.0, 2.0]], [[0.0, 3.0, 2.0]]]])  # (1,0), (0,1), (1,1)/sqrt2
    t = torch.tensor([[[[2.0, 1.0, 0.0]], [[0.0, 0.0, 5.0]]]])  # (1,0), (1,0), (0,1)
    c = 1 / math.sqrt(2)
    sim_s = [[1, 0, c], [0, 1, c], [c, c, 1]]
    sim_t = [[1, 1, 0], [1, 1, 0], [0, 0, 1]]
    index, keep = torch.tensor([[0, 1, 2]]), torch.ones(1, 3, dtype=torch.bool)
    s, t = gather_pixels(s, index), gather_pixels(t, index)
    for T in (1.0, 0.5):
        got = relation_kd(s, t, keep, T)
        assert got.item() == pytest.approx(_kl_rows(sim_t, sim_s, T), rel=1e-5)
    # a pixel left out (keep False) is neither a row nor a column
    keep2 = torch.tensor([[True, False, True]])
    sub = [[r[0], r[2]] for r in (sim_s[0], sim_s[2])], [[r[0], r[2]] for r in (sim_t[0], sim_t[2])]
    got = relation_kd(s, t, keep2, 1.0)
    assert got.item() == pytest.approx(_kl_rows(sub[1], sub[0], 1.0), rel=1e-5)


def test_relation_cross_image_pairs():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 6, 3, 3, generator=g)
    index = torch.stack([torch.randperm(9, generator=g)[:5] for _ in range(2)])
    keep = torch.ones(2, 5, dtype=torch.bool)
    sp, tp = gather_pixels(s, index), gather_pixels(t, index)
    within = relation_kd(sp, tp, keep, 0.5, cross_image=False)
    each = [relation_kd(sp[i:i + 1], tp[i:i + 1], keep[:1], 0.5) for i in range(2)]
    assert within.item() == pytest.approx(sum(e.item() for e in each) / 2, rel=1e-5)
    # cross-image: the mean over the 4 (i, j) blocks, each a batchmean of row KLs
    fs = torch.nn.functional.normalize(s.flatten(2), dim=1)
    ft = torch.nn.functional.normalize(t.flatten(2), dim=1)
    blocks = []
    for i in range(2):
        for j in range(2):
            a_s, b_s = fs[i][:, index[i]].T, fs[j][:, index[j]].T
            a_t, b_t = ft[i][:, index[i]].T, ft[j][:, index[j]].T
            blocks.append(_kl_rows((a_t @ b_t.T).tolist(), (a_s @ b_s.T).tolist(), 0.5))
    cross = relation_kd(sp, tp, keep, 0.5, cross_image=True)
    assert cross.item() == pytest.approx(sum(blocks) / 4, rel=1e-5)
    # a padded position of image 1 (keep False) leaves its rows and columns out
    keep[1, 4] = False
    blocks = []
    for i in range(2):
        for j in range(2):
            pi, pj = index[i][keep[i]], index[j][keep[j]]
            a_s, b_s, a_t, b_t = fs[i][:, pi].T, fs[j][:, pj].T, ft[i][:, pi].T, ft[j][:, pj].T
            kl = _kl_rows((a_t @ b_t.T).tolist(), (a_s @ b_s.T).tolist(), 0.5)
            blocks.append((kl, len(pi)))
    want = sum(k * n for k, n in blocks) / sum(n for _, n in blocks)
    assert relation_kd(sp, tp, keep, 0.5).item() == pytest.approx(want, rel=1e-5)


def test_sample_pixels_valid_only_and_seeded():
    mask = torch.zeros(2, 1, 4, 4)
    mask[0, 0, :2] = 1  # 8 valid positions
    mask[1, 0, 0, :3] = 1  # 3 valid positions
    torch.manual_seed(5)
    index, keep = sample_pixels(mask, 6)
    flat = mask.flatten(1)
    assert keep[0].all() and keep[1].sum() == 3
    assert all(flat[i, index[i][keep[i]]].eq(1).all() for i in range(2))
    assert len(set(index[0].tolist())) == 6
    torch.manual_seed(5)
    again = sample_pixels(mask, 6)
    assert torch.equal(again[0], index) and torch.equal(again[1], keep)


def test_relation_in_the_distiller_adapter_and_no_gradient_at_ignored_pixels():
    torch.manual_seed(0)
    d = Distiller(task=TaskLoss(), w_task=1.0, w_relation=0.5, relation_level="stride8",
                  relation_pixels=8, relation_temperature=0.5,
                  student_channels={"stride8": 4}, teacher_channels={"stride8": 6})
    assert d.feature_levels == ["stride8"] and isinstance(d.adapters["stride8"], torch.nn.Conv2d)
    s_logits = torch.randn(2, 3, 16, 16, requires_grad=True)
    target = torch.randint(0, 3, (2, 16, 16))
    target[:, :8] = 255  # the top half is unlabelled: its feature rows are never sampled
    sf = {"stride8": torch.randn(2, 4, 2, 2, requires_grad=True)}
    tf = {"stride8": torch.randn(2, 6, 4, 4)}  # another stride: resized to 2x2
    terms = d(s_logits, target, None, sf, tf)
    assert set(terms) == {"task", "task_ce", "relation", "loss"}
    torch.testing.assert_close(terms["loss"], terms["task"] + 0.5 * terms["relation"])
    terms["loss"].backward()
    grad = sf["stride8"].grad
    assert torch.all(grad[:, :, 0] == 0) and grad[:, :, 1].abs().sum() > 0
    assert d.adapters["stride8"].weight.grad.abs().sum() > 0


def test_all_terms_add_up_through_the_weight_table():
    torch.manual_seed(0)
    d = Distiller(task=TaskLoss(), w_task=0.3, w_kd=0.2, w_dist=0.5, w_boundary=0.7,
                  w_relation=1.1, relation_level="decoder", student_channels={"decoder": 8},
                  teacher_channels={"decoder": 8})
    s, t = torch.randn(2, 5, 8, 8), torch.randn(2, 5, 8, 8)
    y = torch.randint(0, 5, (2, 8, 8))
    f = {"decoder": torch.randn(2, 8, 8, 8)}
    terms = d(s, y, t, f, {"decoder": torch.randn(2, 8, 8, 8)})
    want = sum(d.weights[k] * terms[k] for k in ("task", "kd", "dist", "boundary", "relation"))
    torch.testing.assert_close(terms["loss"], want)
    assert all(terms[k] > 0 for k in ("dist", "boundary", "relation"))


# ---------------------------------------------------------------- recipe


def test_recipe_keys_load_and_unknown_ones_are_refused(tmp_path):
    cfg = tiny_config(tmp_path, [
        "kd.dist.weight=1", "kd.dist.temperature=2", "kd.dist.beta=0.5", "kd.dist.gamma=2",
        "kd.boundary.weight=1", "kd.boundary.temperature=3", "kd.boundary.edge_weight=2",
        "kd.boundary.body_weight=0.5", "kd.boundary.source=teacher", "kd.boundary.width=2",
        "kd.relation.weight=1", "kd.relation.level=stride8", "kd.relation.pixels=64",
        "kd.relation.temperature=0.2", "kd.relation.cross_image=false"])
    assert cfg.kd.enabled and cfg.kd.feature_taps == ["stride8"]
    assert cfg.kd.weights["dist"] == cfg.kd.weights["boundary"] == 1.0
    assert not tiny_config(tmp_path).kd.enabled
    assert tiny_config(tmp_path, ["w_task=0", "kd.dist.weight=1"]).kd.enabled
    for bad, match in [("kd.dist.tau=2", "kd.dist.tau"),
                       ("kd.boundary.source=edges", "kd.boundary.source"),
                       ("kd.relation.level=stride2", "unknown level"),
                       ("kd.relation.pixels=1", "kd.relation.pixels")]:
        with pytest.raises(ConfigError, match=match):
            tiny_config(tmp_path, [bad])
    with pytest.raises(ConfigError, match="edge_weight and body_weight are both 0"):
        tiny_config(tmp_path, ["kd.boundary.weight=1", "kd.boundary.edge_weight=0",
                               "kd.boundary.body_weight=0"])
    with pytest.raises(ConfigError, match="kd.relation"):
        tiny_config(tmp_path, ["kd.relation.weight=1", "quant.qat=true"])


def test_shipped_recipes_set_the_terms():
    for name, term in [("kd_dist", "dist"), ("kd_boundary", "boundary"),
                       ("kd_relation", "relation")]:
        cfg = load_config(REPO / "configs" / "camvid" / f"{name}.yaml", [])
        assert cfg.kd.weights[term] > 0 and cfg.kd.enabled


# ---------------------------------------------------------------- a short distill run


@pytest.fixture(scope="module")
def teacher_checkpoint(tmp_path_factory):
    from compress.models import create_model, save_checkpoint
    from tests.conftest import tiny_spec

    torch.manual_seed(1)
    spec = tiny_spec(synthetic_names=True, decoder_channels=[32, 16, 16, 16, 16])
    path = tmp_path_factory.mktemp("kdterms") / "teacher.pt"
    return save_checkpoint(path, create_model(spec), spec, metrics=None, epoch=0)


@pytest.mark.parametrize("term", [["kd.dist.weight=1"],
                                  ["kd.boundary.weight=1", "kd.boundary.source=teacher"],
                                  ["kd.relation.weight=1", "kd.relation.pixels=32"]],
                         ids=["dist", "boundary", "relation"])
def test_a_short_distill_run_logs_the_term(tmp_path, teacher_checkpoint, term):
    from compress.train import fit

    cfg = tiny_config(tmp_path, [f"teacher.checkpoint={teacher_checkpoint}",
                                 "teacher.allow_weak=true", "train.epochs=1",
                                 "train.max_steps_per_epoch=2", "data.synthetic_length=8",
                                 *term])
    run = fit(cfg, show_progress=False).run_dir
    row = next(csv.DictReader((run / "metrics.csv").open()))
    name = term[0].split(".")[1]
    assert float(row[f"train_{name}"]) > 0 and math.isfinite(float(row["train_loss"]))


def test_relation_run_resumes_exactly(tmp_path, teacher_checkpoint):
    """The sampled pixels come from (seed, draw count), the count saved in last.pt: a run
    interrupted in its second epoch and resumed ends with the uninterrupted run's weights.
    (Before: drawn from torch's global RNG, which the resumed run's teacher preflight
    advanced, so its second epoch sampled other pixels.)"""
    from compress.train import fit
    from tests.conftest import interrupted_then_resumed

    extra = [f"teacher.checkpoint={teacher_checkpoint}", "teacher.allow_weak=true",
             "kd.relation.weight=1", "kd.relation.pixels=16", "kd.relation.level=stride8"]
    full = fit(tiny_config(tmp_path / "a", extra), show_progress=False).run_dir
    run = interrupted_then_resumed(tiny_config(tmp_path / "b", extra),
                                   tmp_path / "b" / "runs" / "tiny")
    a, b = (torch.load(r / "checkpoints" / "last.pt", weights_only=True)["state_dict"]
            for r in (full, run))
    assert all(torch.equal(a[k], b[k]) for k in a)

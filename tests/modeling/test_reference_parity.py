# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Numerical parity with the original MaskFormer on every reference fixture (folders under
``shared/reference`` holding an ``io.npz``; see that folder's README). Only the public API is
used: ``build_model``, ``DetectionCheckpointer`` and ``model(batched_inputs)``; intermediate
outputs are captured with forward hooks.
"""

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model
from detectron2.structures import Instances
from detectron2.utils.events import EventStorage
from model_testing import fixture_dirs, set_keys

from mask_former import load_config
from mask_former.modeling import semantic_inference

FIXTURES = fixture_dirs()
FIXTURE_IDS = [d.name for d in FIXTURES]


def test_fixtures_found():
    # The public semantic fixture must be there; otherwise every parity test would be vacuous.
    assert "tiny_swin_semantic" in FIXTURE_IDS


def _cfg(fixture: Path, **overrides):
    cfg = load_config(fixture / "config.yaml", device="cpu", freeze=False)
    return set_keys(cfg, overrides)


def _old_layout_copy(fixture: Path, tmp_path: Path) -> Path:
    """The fixture's weights with pixel-decoder keys in the model-zoo (old) layout."""
    with open(fixture / "weights.pkl", "rb") as f:
        data = pickle.load(f, encoding="latin1")
    new = "sem_seg_head.pixel_decoder."
    renamed = {
        ("sem_seg_head." + k[len(new) :] if k.startswith(new) else k): v
        for k, v in data["model"].items()
    }
    assert any(k.startswith("sem_seg_head.layer_") for k in renamed)
    path = tmp_path / "old_layout.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": renamed, "__author__": "test"}, f)
    return path


def _loaded_model(fixture: Path, weights: Path, **overrides):
    model = build_model(_cfg(fixture, **overrides))
    result = DetectionCheckpointer(model).load(str(weights))
    assert result is not None
    # Every model parameter must come from the file (a silent partial load would pass
    # only by luck, so compare with the file's values).
    with open(weights, "rb") as f:
        stored = pickle.load(f, encoding="latin1")["model"]
    state = model.state_dict()
    for name, value in state.items():
        key = name
        if key not in stored and key.startswith("sem_seg_head.pixel_decoder."):
            key = "sem_seg_head." + key[len("sem_seg_head.pixel_decoder.") :]
        if key not in stored and name.startswith("criterion."):
            continue  # criterion buffers are built from the config, not learned
        assert key in stored, f"{name} not loaded from {weights.name}"
        np.testing.assert_array_equal(value.numpy(), np.asarray(stored[key]), err_msg=name)
    return model


def _check_panoptic(result, seg: np.ndarray, info: np.ndarray, what: str):
    """Compare a model's (panoptic_seg, segments_info) with the fixture's arrays."""
    panoptic_seg, segments_info = result
    assert panoptic_seg.dtype == torch.int32
    np.testing.assert_array_equal(panoptic_seg.numpy(), seg, err_msg=what)
    rows = [(s["id"], s["category_id"], int(s["isthing"])) for s in segments_info]
    expected = [tuple(int(v) for v in row) for row in np.asarray(info).reshape(-1, 3)]
    assert rows == expected, what


@pytest.mark.parametrize("layout", ["current", "old"])
@pytest.mark.parametrize("fixture", FIXTURES, ids=FIXTURE_IDS)
def test_inference_parity(fixture, layout, tmp_path):
    io = np.load(fixture / "io.npz")
    weights = (
        fixture / "weights.pkl" if layout == "current" else _old_layout_copy(fixture, tmp_path)
    )
    model = _loaded_model(fixture, weights)
    model.eval()
    captured = {}
    model.backbone.register_forward_hook(lambda m, i, o: captured.update(features=o))
    model.sem_seg_head.register_forward_hook(lambda m, i, o: captured.update(head=o))
    image0, image1 = torch.from_numpy(io["image0"]), torch.from_numpy(io["image1"])
    h0, w0 = image0.shape[-2:]
    sem1 = io["sem_seg1"]
    inputs = [
        {"image": image0, "height": h0, "width": w0},
        {"image": image1, "height": sem1.shape[-2], "width": sem1.shape[-1]},
    ]
    with torch.no_grad():
        results = model(inputs)

    features = captured["features"]
    for name in ("res2", "res3", "res4", "res5"):
        np.testing.assert_allclose(features[name].numpy(), io[f"feat_{name}"], atol=1e-4)
    head = captured["head"]
    np.testing.assert_allclose(head["pred_logits"].numpy(), io["pred_logits"], atol=1e-4)
    np.testing.assert_allclose(head["pred_masks"].numpy(), io["pred_masks"], atol=1e-4)
    num_aux = len(
        [k for k in list(io.keys()) if k.startswith("aux") and k.endswith("_pred_logits")]
    )
    assert len(head["aux_outputs"]) == num_aux
    for i, aux in enumerate(head["aux_outputs"]):
        for key in ("pred_logits", "pred_masks"):
            np.testing.assert_allclose(aux[key].numpy(), io[f"aux{i}_{key}"], atol=1e-4)
    for i, result in enumerate(results):
        np.testing.assert_allclose(result["sem_seg"].numpy(), io[f"sem_seg{i}"], atol=1e-4)
        if f"panoptic_seg{i}" in list(io.keys()):
            _check_panoptic(
                result["panoptic_seg"], io[f"panoptic_seg{i}"], io[f"segments_info{i}"], f"{i}"
            )


def _designed_cases(io):
    return sorted({k.split("_")[0] for k in list(io.keys()) if k.startswith("pp")})


@pytest.mark.parametrize("fixture", FIXTURES, ids=FIXTURE_IDS)
def test_semantic_inference_on_designed_cases(fixture):
    io = np.load(fixture / "io.npz")
    cases = _designed_cases(io)
    assert cases
    for case in cases:
        semseg = semantic_inference(
            torch.from_numpy(io[f"{case}_mask_cls"]), torch.from_numpy(io[f"{case}_mask_pred"])
        )
        np.testing.assert_allclose(semseg.numpy(), io[f"{case}_semseg"], atol=1e-5)


def run_designed_cases(model, io, cases):
    """
    Run each designed case through the whole model in eval mode: the head's output is replaced
    (forward hook) by the case's (class, mask) logits at the unpadded image size.
    Returns one output dict per case.
    """
    model.eval()
    results = []
    for case in cases:
        mask_cls = torch.from_numpy(io[f"{case}_mask_cls"])
        mask_pred = torch.from_numpy(io[f"{case}_mask_pred"])
        replacement = {"pred_logits": mask_cls[None], "pred_masks": mask_pred[None]}
        handle = model.sem_seg_head.register_forward_hook(lambda m, i, o: replacement)
        h, w = mask_pred.shape[-2:]
        image = torch.zeros((3, h, w))
        with torch.no_grad():
            results.append(model([{"image": image, "height": h, "width": w}])[0])
        handle.remove()
    return results


@pytest.mark.parametrize("fixture", FIXTURES, ids=FIXTURE_IDS)
def test_designed_cases_through_model(fixture):
    io = np.load(fixture / "io.npz")
    cases = _designed_cases(io)
    # No padding, so that upsampling the (unpadded) mask logits and resizing are identities.
    model = build_model(_cfg(fixture, **{"MODEL.MASK_FORMER.SIZE_DIVISIBILITY": 0}))
    for case, result in zip(cases, run_designed_cases(model, io, cases)):
        np.testing.assert_allclose(result["sem_seg"].numpy(), io[f"{case}_semseg"], atol=1e-5)
        if f"{case}_panoptic_seg" in list(io.keys()):
            _check_panoptic(
                result["panoptic_seg"],
                io[f"{case}_panoptic_seg"],
                io[f"{case}_segments_info"],
                case,
            )


@pytest.mark.parametrize("fixture", FIXTURES, ids=FIXTURE_IDS)
def test_loss_parity(fixture):
    io = np.load(fixture / "io.npz")
    model = _loaded_model(fixture, fixture / "weights.pkl")
    model.train()
    batch = []
    for i in range(2):
        image = torch.from_numpy(io[f"image{i}"])
        instances = Instances(tuple(image.shape[-2:]))
        instances.gt_masks = torch.from_numpy(io[f"gt_masks{i}"])
        instances.gt_classes = torch.from_numpy(io[f"gt_classes{i}"])
        batch.append({"image": image, "instances": instances})
    with EventStorage():
        losses = model(batch)
    expected = dict(zip([str(n) for n in io["loss_names"]], io["loss_values"].tolist()))
    assert set(losses) == set(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(losses[name].item(), value, rtol=1e-4, err_msg=name)


def _independent_panoptic(mask_cls, mask_pred, thing_ids, object_threshold, overlap_threshold):
    """
    MaskFormer's panoptic inference as reference-facts.md (section 2.4) states it, pixel by
    pixel in Python floats (float64), sharing nothing with the library's vectorised code.

    Returns:
        the (H, W) int32 segment map, the (n, 3) rows (id, category_id, isthing) and, for the
        checks of the test, {"unsure": #queries dropped by the object threshold, "merged":
        #stuff queries that joined an earlier segment of their class, "dropped": #kept queries
        that made no segment}.
    """
    num_classes = len(mask_cls[0]) - 1
    kept = []  # (query, score, label) of the queries kept, in query order
    counts = {"unsure": 0, "merged": 0, "dropped": 0}
    for q, logits in enumerate(mask_cls):
        top = max(logits)
        exps = [math.exp(v - top) for v in logits]
        probs = [e / sum(exps) for e in exps]
        score = max(probs)
        label = probs.index(score)
        if label != num_classes and score > object_threshold:
            kept.append((q, score, label))
        elif label != num_classes:
            counts["unsure"] += 1
    height, width = len(mask_pred[0]), len(mask_pred[0][0])
    seg = np.zeros((height, width), np.int32)
    if not kept:
        return seg, np.zeros((0, 3), np.int64), counts
    owner = [[0] * width for _ in range(height)]
    owned, own = [0] * len(kept), [0] * len(kept)
    for y in range(height):
        for x in range(width):
            best = None
            for k, (q, score, _) in enumerate(kept):
                prob = 1.0 / (1.0 + math.exp(-mask_pred[q][y][x]))
                own[k] += prob >= 0.5
                if best is None or score * prob > best:  # ties: the first query
                    best, owner[y][x] = score * prob, k
            owned[owner[y][x]] += 1
    segment_of, rows, stuff_segment = [0] * len(kept), [], {}
    for k, (_, _, label) in enumerate(kept):
        if owned[k] == 0 or own[k] == 0 or owned[k] / own[k] < overlap_threshold:
            counts["dropped"] += 1
            continue
        isthing = label in thing_ids
        if not isthing and label in stuff_segment:
            segment_of[k] = stuff_segment[label]
            counts["merged"] += 1
            continue
        rows.append((len(rows) + 1, label, int(isthing)))
        segment_of[k] = len(rows)
        if not isthing:
            stuff_segment[label] = len(rows)
    for y in range(height):
        for x in range(width):
            seg[y, x] = segment_of[owner[y][x]]
    return seg, np.array(rows, np.int64).reshape(-1, 3), counts


# The panoptic check on the public fixture: thing classes (dataset id -> contiguous id) and
# thresholds with which every rule of the inference decides something in the designed cases.
THING_IDS = {11: 1, 13: 3, 17: 5}
OBJECT_MASK_THRESHOLD, OVERLAP_THRESHOLD = 0.7, 0.3


def test_panoptic_check_path_on_public_fixture():
    """
    Exercise the panoptic branch of the designed-case check (used on panoptic fixtures):
    the public fixture's model with PANOPTIC_ON and registered thing classes, compared with an
    independent implementation of the panoptic rule.
    """
    fixture = FIXTURES[FIXTURE_IDS.index("tiny_swin_semantic")]
    MetadataCatalog.get("_test_panoptic_things").set(thing_dataset_id_to_contiguous_id=THING_IDS)
    io = dict(np.load(fixture / "io.npz"))
    cases = _designed_cases(io)
    overrides = {
        "MODEL.MASK_FORMER.SIZE_DIVISIBILITY": 0,
        "MODEL.MASK_FORMER.TEST.PANOPTIC_ON": True,
        "MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD": OBJECT_MASK_THRESHOLD,
        "MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD": OVERLAP_THRESHOLD,
        "DATASETS.TRAIN": ("_test_panoptic_things",),
    }
    model = build_model(_cfg(fixture, **overrides))
    thing_ids = set(THING_IDS.values())
    totals = {"segments": 0, "things": 0, "unsure": 0, "merged": 0, "dropped": 0}
    for case in cases:
        seg, info, counts = _independent_panoptic(
            io[f"{case}_mask_cls"].tolist(),
            io[f"{case}_mask_pred"].tolist(),
            thing_ids,
            OBJECT_MASK_THRESHOLD,
            OVERLAP_THRESHOLD,
        )
        io[f"{case}_panoptic_seg"], io[f"{case}_segments_info"] = seg, info
        totals["segments"] += len(info)
        totals["things"] += int(info[:, 2].sum())
        for key, value in counts.items():
            totals[key] += value
    # Every rule of the inference decides something in these cases (else a check is vacuous).
    assert all(totals.values()), totals
    for case, result in zip(cases, run_designed_cases(model, io, cases)):
        _check_panoptic(
            result["panoptic_seg"], io[f"{case}_panoptic_seg"], io[f"{case}_segments_info"], case
        )

#!/usr/bin/env python
# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Convert a Hugging Face transformers MaskFormer checkpoint into this project's weights and config.

Usage:
    python tools/convert-hf-maskformer-to-d2.py maskformer-swin-tiny-ade/ model.pkl \
        --config-output model.yaml
    python demo/demo.py --config-file model.yaml --input photo.jpg --opts MODEL.DEVICE cpu

HF_DIR is a folder as ``save_pretrained`` writes it: ``config.json`` and safetensors or .bin
weights of a ``MaskFormerForInstanceSegmentation`` with a Swin or ResNet backbone, and optionally
the ``preprocessor_config.json`` of its image processor (pixel mean/std and test size; without
it MaskFormerImageProcessor's defaults are used). Nothing is downloaded.

The weights are written as ``{"model": {name: numpy array}, "__author__": "huggingface",
"matching_heuristics": False, "class_names": [str, ...], "metadata": {"stuff_classes": [str,
...]}}`` (plain data only, so the project's restricted unpickler loads it), with names exactly
those of this project's ``MaskFormer``; "metadata" is the format of the Trainer's checkpoints, so
the Predictor and the demo name the classes from it. The
config is self-contained (no ``_BASE_``, safe YAML): every key that defines the network,
``MODEL.WEIGHTS`` pointing at the weights, and the class names (HF's ``id2label``) as a comment.
Before anything is written, the config is loaded the way ``train_net.py`` loads it and the model
it builds is checked to have exactly the converted weights' names and shapes. HF configurations
this project cannot reproduce are refused with an error naming the HF config field.
"""

import argparse
import json
import logging
import os
import pickle
import sys
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np
import yaml

from mask_former.interop import hf_mapping as mapping
from mask_former.utils import atomic_output_path, atomic_write

logger = logging.getLogger("convert_hf_maskformer")

_MISSING_TRANSFORMERS = (
    "Converting a Hugging Face checkpoint needs the packages transformers and safetensors: "
    "`make setup` installs them, or `pip install -r requirements/interop.txt`"
)


# Defaults of MaskFormerImageProcessor, used when the checkpoint has no preprocessor_config.json.
_HF_PROCESSOR_DEFAULTS = {
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "size": {"shortest_edge": 800, "longest_edge": 1333},
}


def _transformers() -> Any:
    try:
        import safetensors  # noqa: F401  (transformers reads .safetensors weights with it)
        import transformers
    except ImportError as e:
        raise SystemExit(f"{_MISSING_TRANSFORMERS} ({e})") from e
    return transformers


def load_hf_config(hf_dir: str) -> Any:
    """The ``MaskFormerConfig`` of ``hf_dir``; refuses other model types before any weight."""
    transformers = _transformers()
    path = os.path.join(hf_dir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{hf_dir} has no config.json: not a save_pretrained folder")
    with open(path) as f:
        model_type = json.load(f).get("model_type")
    if model_type != "maskformer":
        raise mapping.UnsupportedCheckpointError(
            f"HF config field model_type = {model_type!r}: only MaskFormer checkpoints "
            "('maskformer') are converted"
        )
    return transformers.MaskFormerConfig.from_pretrained(hf_dir, local_files_only=True)


def load_hf_state_dict(hf_dir: str, hf_config: Any) -> Dict[str, Any]:
    """The weights of the HF model, loaded (and renamed to current names) by transformers."""
    transformers = _transformers()
    model, info = transformers.MaskFormerForInstanceSegmentation.from_pretrained(
        hf_dir, config=hf_config, local_files_only=True, output_loading_info=True
    )
    # A weight the files lack would be left at its random initialisation: refuse.
    if info.get("missing_keys"):
        raise ValueError(
            f"{hf_dir}: the checkpoint lacks {len(info['missing_keys'])} weights of "
            f"MaskFormerForInstanceSegmentation, e.g. {sorted(info['missing_keys'])[:5]}"
        )
    if info.get("unexpected_keys"):
        logger.warning(
            "Weights of %s that HF's model does not use: %s",
            hf_dir,
            sorted(info["unexpected_keys"]),
        )
    return model.state_dict()


def load_processor_config(hf_dir: str) -> Optional[Dict]:
    """``preprocessor_config.json`` of ``hf_dir`` as a dict, or None if there is none."""
    path = os.path.join(hf_dir, "preprocessor_config.json")
    if not os.path.isfile(path):
        logger.warning(
            "%s has no preprocessor_config.json: using MaskFormerImageProcessor's "
            "defaults (ImageNet mean/std, test size 800/1333)",
            hf_dir,
        )
        return None
    with open(path) as f:
        return json.load(f)


def _test_sizes(size: Union[int, Mapping, None], max_size: Optional[int]) -> Dict[str, int]:
    if isinstance(size, int):
        size = {"shortest_edge": size}
    size = dict(size or {})
    shortest, longest = size.get("shortest_edge"), size.get("longest_edge") or max_size
    keys = {}
    if shortest:
        keys["INPUT.MIN_SIZE_TEST"] = int(shortest)
    if longest:
        keys["INPUT.MAX_SIZE_TEST"] = int(longest)
    return keys


def preprocessing_config(processor: Optional[Mapping]) -> Dict[str, Any]:
    """
    Config keys of the input pipeline from a ``preprocessor_config.json`` (a dict; None: the
    defaults of MaskFormerImageProcessor). HF feeds ``(x * rescale - mean) / std`` of an RGB
    image; this project feeds ``(x - PIXEL_MEAN) / PIXEL_STD``, so both divide by ``rescale``.
    """
    p = dict(_HF_PROCESSOR_DEFAULTS, **(processor or {}))
    rescale = float(p["rescale_factor"]) if p["do_rescale"] else 1.0
    mean = [float(m) for m in p["image_mean"]] if p["do_normalize"] else [0.0, 0.0, 0.0]
    std = [float(s) for s in p["image_std"]] if p["do_normalize"] else [1.0, 1.0, 1.0]
    if len(mean) == 1:
        mean, std = mean * 3, std * 3
    mapping.require(
        len(mean) == 3 and len(std) == 3,
        "preprocessor image_mean/image_std",
        (mean, std),
        "need one value per RGB channel",
    )
    keys = {
        "MODEL.PIXEL_MEAN": [m / rescale for m in mean],
        "MODEL.PIXEL_STD": [s / rescale for s in std],
        "INPUT.FORMAT": "RGB",
    }
    keys.update(_test_sizes(p.get("size"), p.get("max_size")))
    if p.get("ignore_index") is not None:
        keys["MODEL.SEM_SEG_HEAD.IGNORE_VALUE"] = int(p["ignore_index"])
    return keys


def class_names(hf_config: Any) -> List[str]:
    """``id2label`` as a list indexed by contiguous class id; refuses gaps."""
    id2label = {int(k): str(v) for k, v in hf_config.id2label.items()}
    mapping.require(
        sorted(id2label) == list(range(len(id2label))) and len(id2label) == hf_config.num_labels,
        "id2label",
        sorted(id2label)[:10],
        f"class ids must be 0..{hf_config.num_labels - 1}",
    )
    return [id2label[i] for i in range(len(id2label))]


class _ConfigDumper(yaml.SafeDumper):
    """Safe YAML with nested blocks for mappings and one line per list, as the configs/ files."""


_ConfigDumper.add_representer(
    list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, True)
)


def _nested(keys: Dict[str, Any]) -> Dict[str, Any]:
    tree: Dict[str, Any] = {}
    for dotted, value in sorted(keys.items()):
        node = tree
        *parents, leaf = dotted.split(".")
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    return tree


def config_text(keys: Dict[str, Any], names: List[str], hf_dir: str, weights: str) -> str:
    """The YAML text: a header with the class names as comments, then the nested keys."""
    lines = [
        f"# Converted from the Hugging Face MaskFormer checkpoint {os.path.abspath(hf_dir)}",
        "# by tools/convert-hf-maskformer-to-d2.py. Class names (contiguous id: name), also",
        f'# stored as "class_names" in {os.path.basename(weights)}:',
    ]
    lines += [f"#   {i}: {json.dumps(name)}" for i, name in enumerate(names)]
    body = yaml.dump(_nested(keys), Dumper=_ConfigDumper, sort_keys=True, width=100)
    return "\n".join(lines) + "\n" + body


def load_written_config(path: str) -> Any:
    """Load a config file the way train_net.py does (``mask_former.load_config``), unfrozen."""
    from mask_former.config import load_config

    return load_config(path, cpu_fallback=False, freeze=False)


def model_shapes(cfg: Any) -> Dict[str, Tuple[int, ...]]:
    """Names and shapes of the state dict of the model ``cfg`` builds (on the meta device)."""
    import torch
    from detectron2.modeling import META_ARCH_REGISTRY

    with torch.device("meta"):
        model = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_weights_fit(cfg: Any, weights: Dict[str, np.ndarray]) -> None:
    """Raise unless the model built from ``cfg`` has exactly the names and shapes of ``weights``."""
    expected = model_shapes(cfg)
    missing = sorted(set(expected) - set(weights))
    extra = sorted(set(weights) - set(expected))
    wrong = [
        (k, weights[k].shape, expected[k])
        for k in sorted(set(weights) & set(expected))
        if tuple(weights[k].shape) != expected[k]
    ]
    if missing or extra or wrong:
        raise ValueError(
            "The converted weights do not fit the model the written config builds (a bug of "
            f"the converter): missing {missing[:5]}, unexpected {extra[:5]}, "
            f"wrong shapes (key, converted, model) {wrong[:5]}"
        )


def convert(hf_dir: str, output: str, config_output: str) -> Dict[str, Any]:
    """Convert ``hf_dir``; write the weights to ``output`` and the config to ``config_output``."""
    hf_config = load_hf_config(hf_dir)
    keys = mapping.model_config(hf_config)  # refuses unsupported configs before loading weights
    keys.update(preprocessing_config(load_processor_config(hf_dir)))
    keys["MODEL.WEIGHTS"] = os.path.abspath(output)
    keys["VERSION"] = 2
    names = class_names(hf_config)
    weights, ignored = mapping.convert_state_dict(load_hf_state_dict(hf_dir, hf_config), hf_config)
    if ignored:
        logger.info(
            "Left out %d HF weights no HF output depends on, e.g. %s",
            len(ignored),
            ", ".join(ignored[:3]),
        )
        logger.debug("All left out: %s", ", ".join(ignored))
    result = {
        "model": weights,
        "__author__": "huggingface",
        "matching_heuristics": False,
        "class_names": names,  # the earlier format, still read
        "metadata": {"stuff_classes": names},  # the Trainer's checkpoints' format
    }
    # Both files appear only once the written config has been checked against the weights.
    with atomic_output_path(config_output) as tmp_config:
        with open(tmp_config, "w") as f:
            f.write(config_text(keys, names, hf_dir, output))
        check_weights_fit(load_written_config(tmp_config), weights)
        with atomic_write(output) as f:
            # Protocol 5 would rebuild arrays through numpy's _frombuffer, which the project's
            # restricted unpickler refuses; 4 uses ndarray/_reconstruct only.
            pickle.dump(result, f, protocol=4)
    logger.info("Wrote %d weights to %s and the config to %s", len(weights), output, config_output)
    return result


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("hf_dir", help="folder written by save_pretrained (config.json + weights)")
    parser.add_argument("output", help="Detectron2 checkpoint to write (.pkl)")
    parser.add_argument(
        "--config-output",
        help="config file to write (default: OUTPUT with the extension .yaml)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config_output = args.config_output or os.path.splitext(args.output)[0] + ".yaml"
    try:
        convert(args.hf_dir, args.output, config_output)
    except (ValueError, OSError) as e:  # UnsupportedCheckpointError is a ValueError
        raise SystemExit(f"Cannot convert {args.hf_dir}: {e}") from e


if __name__ == "__main__":
    main(sys.argv[1:])

# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
Other implementations' checkpoints in this project's terms: :mod:`.hf_mapping` maps a Hugging
Face ``transformers`` MaskFormer onto this project's config keys and weight names (used by
``tools/convert-hf-maskformer-to-d2.py``). Nothing here imports transformers.
"""

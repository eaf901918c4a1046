"""Test-wide settings, for the library tests and for the notebooks that nbval executes.

The notebooks run in CPU mode unless QLORA_LESSONS_MODE is already set (the GPU workflow sets it to
"gpu"), and with the Hugging Face hub switched off: nothing in CPU mode may touch the network.
Kernels started by nbval inherit this environment.
"""

import os

os.environ.setdefault("QLORA_LESSONS_MODE", "cpu")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

"""Generate many images from a prompt list, split across processes (see helpers/generate_many.py).

    python scripts/generate_many.py prompts.txt --steps 20
    torchrun --nproc_per_node 2 scripts/generate_many.py prompts.csv      # 2 processes (CPU or 2 GPUs)
    accelerate launch --num_processes 2 scripts/generate_many.py prompts.csv

Run the same command again after an interruption: finished images are skipped, the rest are made.
"""

import helpers  # noqa: F401  (quiet library logs before diffusers loads)
from helpers.generate_many import main

if __name__ == "__main__":
    main()

"""``python -m qlora_lessons`` prints the environment report (versions, CUDA device, course mode)."""

from qlora_lessons.env import main

main()

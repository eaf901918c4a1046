"""``python -m qlora_lessons``: the ``qlora-lessons`` command; with no argument, the environment report."""

from qlora_lessons.cli import main

main()

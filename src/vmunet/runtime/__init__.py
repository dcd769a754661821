"""What every workflow runs on: devices and mixed precision (``device``), the distributed set-up
(``distributed``), self-describing run folders and checkpoints (``run_folder``), serve's request guards
(``http_guards``)."""

"""The dataset layouts, by the config's ``dataset`` name. Adding a layout: one module with a ``Layout`` subclass
(``base.py`` says what it answers) and one line below; its name also goes into ``vmunet.config.DATASETS``."""

from __future__ import annotations

from vmunet.data.layouts.base import Layout
from vmunet.data.layouts.folders import Folders
from vmunet.data.layouts.isic import Isic
from vmunet.data.layouts.nnunet import NnUNet
from vmunet.data.layouts.polyp import Polyp
from vmunet.data.layouts.synapse import Synapse

LAYOUTS: dict[str, Layout] = {layout.name: layout for layout in (
    Isic(),
    Folders(),
    Synapse(),
    NnUNet(),
    Polyp(),
)}


def find_layout(name: str) -> Layout | None:
    """The layout of a dataset name; None for one without a folder (the demo builds its data in memory)."""
    return LAYOUTS.get(name)

"""Safety-feature coverage: the inventory of safety features, the gaps a target corpus leaves, dataset footprints
and overlap. Reports (markdown / HTML with plots) live in `qscope_data.coverage.report`."""

from qscope_data.coverage.gaps import GapReport, compute_gaps, load_gaps
from qscope_data.coverage.inventory import Inventory, InventoryFeature, load_inventory, save_inventory, select_features
from qscope_data.coverage.overlap import Footprint, OverlapResult, analyse_overlap, load_footprint

__all__ = [
    "Footprint", "GapReport", "Inventory", "InventoryFeature", "OverlapResult", "analyse_overlap", "compute_gaps",
    "load_footprint", "load_gaps", "load_inventory", "save_inventory", "select_features",
]

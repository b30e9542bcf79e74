"""The phantom demo case in Slicer's Sample Data module: made on this machine when clicked, never downloaded."""

from __future__ import annotations

from pathlib import Path

import slicer

PHANTOM_SEED = 9001  # held out of the demo model's training seeds


def load_phantom_case(source=None):
    """Generate the held-out phantom and add its NCCT and CECT (and its ROI markups) to the scene; returns
    [NCCT node, CECT node]. Sample Data's button calls it; scripts call it directly, since SampleData's
    downloadSample() never calls a custom downloader (Slicer's SampleData.py: downloadSamples goes to
    downloadFromSource, which reads only the source's URIs)."""
    from SyntheticContrastLib import mrml
    from SyntheticContrastLib.phantom import make_phantom

    case = make_phantom(PHANTOM_SEED)
    ncct = mrml.node_from_volume(slicer.mrmlScene, case.ncct, f"Phantom{PHANTOM_SEED} NCCT")
    cect = mrml.node_from_volume(slicer.mrmlScene, case.cect, f"Phantom{PHANTOM_SEED} CECT (phantom, not a patient)")
    mrml.markups_from_rois(slicer.mrmlScene, case.annotations, ncct)
    slicer.util.setSliceViewerLayers(background=ncct, fit=True)
    return [ncct, cect]


def register(icon: Path) -> None:
    """Called once Slicer has started (Sample Data must exist by then)."""
    try:
        import SampleData
    except ImportError:
        return
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="Synthetic Contrast",
        sampleName="ChestPhantomNCCT",
        thumbnailFileName=str(icon),
        uris=[],
        fileNames=[],
        nodeNames=[],
        customDownloader=load_phantom_case,
    )

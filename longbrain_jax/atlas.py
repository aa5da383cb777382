"""Facts of the FreeSurfer aseg atlas that every method scoring regional volumes shares.

`REGIONS` names the structures that regional volumes, aging rates and Dice are reported
for, each as the group of aseg label ids (left and right) that makes it up.
"""

from __future__ import annotations

#: FreeSurfer aseg label groups used for volumes and aging rates.
REGIONS: dict[str, tuple[int, ...]] = {
    "hippocampus": (17, 53),
    "amygdala": (18, 54),
    "lateral_ventricles": (4, 43, 5, 44),
    "cortical_gm": tuple(range(1000, 1036)) + tuple(range(2000, 2036)),
    "cerebral_wm": (2, 41),
    "subcortical_gm": (10, 11, 12, 13, 26, 49, 50, 51, 52, 58),
    "cerebellum": (7, 8, 46, 47),
    "brainstem": (16,),
}

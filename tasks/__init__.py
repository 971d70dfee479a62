"""Benchmarks, by the name given to `--tasks`. Values are `module:Class`."""
TASKS: dict[str, str] = {
    "pope": "omnibench.tasks.pope:Pope",
    "mme": "omnibench.tasks.mme:Mme",
    "vqav2": "omnibench.tasks.vqav2:VQAv2",
    "gqa": "omnibench.tasks.gqa:GQA",
    "mmmu": "omnibench.tasks.mmmu:MMMU",
    "coco_fid30k": "omnibench.tasks.coco_fid:CocoFid",
}
# lmms-eval's (0.7.3) names for the same benchmarks: each is one of ours with its split (and config) fixed.
# pope_full is lmms-eval's group of pope_adv, pope_pop and pope_random: here one pope run over the three
# Full splits, scored per split and averaged (the official protocol; lmms-eval reports each subtask).
# Its `mme`, `gqa` and `pope` are ours by the same name; names over other datasets (gqa_lite,
# vqav2_val_lite: LMMs-Eval-Lite) or other prompts (mmmu_val_reasoning, ...) are not aliases.
ALIASES: dict[str, tuple[str, dict[str, str]]] = {
    "mmmu_val": ("mmmu", {"split": "validation"}),
    "mmmu_test": ("mmmu", {"split": "test"}),
    "vqav2_val": ("vqav2", {"split": "validation"}),
    "vqav2_test": ("vqav2", {"split": "test"}),
    "pope_adv": ("pope", {"config": "Full", "split": "adversarial"}),
    "pope_pop": ("pope", {"config": "Full", "split": "popular"}),
    "pope_random": ("pope", {"config": "Full", "split": "random"}),
    "pope_full": ("pope", {"config": "Full", "split": "adversarial+popular+random"}),
}

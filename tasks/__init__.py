"""Benchmarks, by the name given to `--tasks`. Values are `module:Class`."""
TASKS: dict[str, str] = {
    "pope": "omnibench.tasks.pope:Pope",
    "mme": "omnibench.tasks.mme:Mme",
    "vqav2": "omnibench.tasks.vqav2:VQAv2",
    "gqa": "omnibench.tasks.gqa:GQA",
    "mmmu": "omnibench.tasks.mmmu:MMMU",
    "coco_fid30k": "omnibench.tasks.coco_fid:CocoFid",
}
# lmms-eval's names for the same benchmarks: each is one of ours with its split fixed.
ALIASES: dict[str, tuple[str, dict[str, str]]] = {
    "mmmu_val": ("mmmu", {"split": "validation"}),
    "mmmu_test": ("mmmu", {"split": "test"}),
    "vqav2_val": ("vqav2", {"split": "validation"}),
    "vqav2_test": ("vqav2", {"split": "test"}),
}

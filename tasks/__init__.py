"""Benchmarks, by the name given to `--tasks`. Values are `module:Class`."""
TASKS: dict[str, str] = {
    "pope": "omnibench.tasks.pope:Pope",
    "mme": "omnibench.tasks.mme:Mme",
    "vqav2": "omnibench.tasks.vqav2:VQAv2",
    "gqa": "omnibench.tasks.gqa:GQA",
    "mmmu": "omnibench.tasks.mmmu:MMMU",
    "coco_fid30k": "omnibench.tasks.coco_fid:CocoFid",
}

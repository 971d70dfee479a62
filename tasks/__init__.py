"""Benchmarks, by the name given to `--tasks`. Values are `module:Class`."""
TASKS: dict[str, str] = {
    "pope": "tasks.pope:Pope",
    "mme": "tasks.mme:Mme",
    "vqav2": "tasks.vqav2:VQAv2",
    "gqa": "tasks.gqa:GQA",
    "mmmu": "tasks.mmmu:MMMU",
    "coco_fid30k": "tasks.coco_fid:CocoFid",
}

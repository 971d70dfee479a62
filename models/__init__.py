"""Model adapters, by the name given to `--model`. Values are `module:Class`, imported on use so
that one family's heavy dependencies never load for another."""
MODELS: dict[str, str] = {
    "hf": "omnibench.models.hf:HFAdapter",
    "omnimamba": "omnibench.models.omnimamba:OmniMambaAdapter",
    "showo": "omnibench.models.showo:ShowoAdapter",
    "janusflow": "omnibench.models.janusflow:JanusFlowAdapter",
}
# Timed by run_speed.py beside the models, answering no benchmark: mamba-ssm's own Mamba-2 1.3B with
# its generate(cg=True) decode.
SPEED_REFERENCES: dict[str, str] = {
    "mamba2_ref": "omnibench.models.omnimamba.reference:MambaSsmReference",
}

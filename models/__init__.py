"""Model adapters, by the name given to `--model`. Values are `module:Class`, imported on use so
that one family's heavy dependencies never load for another."""
MODELS: dict[str, str] = {
    "hf": "models.hf:HFAdapter",
    "omnimamba": "models.omnimamba:OmniMambaAdapter",
    "showo": "models.showo:ShowoAdapter",
    "janusflow": "models.janusflow:JanusFlowAdapter",
}
# Timed by run_speed.py beside the models, answering no benchmark: mamba-ssm's own Mamba-2 1.3B with
# its generate(cg=True) decode.
SPEED_REFERENCES: dict[str, str] = {
    "mamba2_ref": "models.omnimamba.reference:MambaSsmReference",
}

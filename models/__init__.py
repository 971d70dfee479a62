"""Model adapters, by the name given to `--model`. Values are `module:Class`, imported on use so
that one family's heavy dependencies never load for another."""
MODELS: dict[str, str] = {
    "hf": "models.hf:HFAdapter",
    "omnimamba": "models.omnimamba:OmniMambaAdapter",
    "showo": "models.showo:ShowoAdapter",
    "janusflow": "models.janusflow:JanusFlowAdapter",
}

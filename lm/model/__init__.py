"""The Transformer LM: ``TransformerLM``, ``ModelConfig``, ``load_model`` (from a checkpoint dir)."""

from lm.model.transformer import KVCache, ModelConfig, TransformerLM
from lm.train.checkpoint import load_weights, read_checkpoint_meta


def load_model(checkpoint_dir, device: str = "cpu") -> TransformerLM:
    """Build the model recorded in ``checkpoint_dir/meta.json`` and load its weights (eval mode)."""
    meta = read_checkpoint_meta(checkpoint_dir)
    if not meta.get("model_config"):
        raise ValueError(f"checkpoint {checkpoint_dir} records no model_config in meta.json")
    model = TransformerLM(ModelConfig.model_validate(meta["model_config"]))
    load_weights(checkpoint_dir, model, meta)
    return model.to(device).eval()


__all__ = ["KVCache", "ModelConfig", "TransformerLM", "load_model"]

"""``replace_hyper_connections``: a transformers DeepSeek-V4 model's hyper-connection
modules replaced by ``DeepseekV4Connection`` / ``DeepseekV4Head``, and its decoder
layers given a forward whose attention -> MLP boundary is one ``mhc_post_pre``."""

import types

from torch import nn

from ._mhc import mhc_post
from ._modules import DeepseekV4Connection, DeepseekV4Head

_REPLACEMENTS = {"DeepseekV4HyperConnection": DeepseekV4Connection,
                 "DeepseekV4HyperHead": DeepseekV4Head}


def replace_hyper_connections(model):
    """Replace, in place, every ``DeepseekV4HyperConnection`` and ``DeepseekV4HyperHead``
    submodule of ``model`` (a transformers DeepSeek-V4 model; matched by class name,
    transformers is not imported) by ``DeepseekV4Connection`` / ``DeepseekV4Head``,
    which hold the *same* Parameter objects (``state_dict`` keys and values unchanged,
    optimizers keep working) and return what the replaced modules returned, computed
    by mhc_array's kernels forward and backward. Each decoder layer of the expected
    structure (``DeepseekV4DecoderLayer`` with ``attn_hc``, ``self_attn``, ``ffn_hc``,
    ``mlp`` and their norms) also gets a forward (``fused_layer_forward``) whose post
    steps run on ``mhc_post`` and whose attention -> MLP boundary is one
    ``mhc_post_pre``: the same outputs and gradients, with the post steps computed
    in float32 and rounded once (transformers rounds ``post`` and ``comb`` to the
    streams' dtype first). Returns the number of modules replaced -- hyper-connection
    modules and decoder layers given that forward (a layer of another structure is
    left as it is and not counted); 0 for a model without them, and for a second
    call::

        model = DeepseekV4ForCausalLM.from_pretrained(...)
        mhc_array.torch.replace_hyper_connections(model)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    targets = [(name, m) for name, m in model.named_modules()
               if type(m).__name__ in _REPLACEMENTS]
    for name, m in targets:
        new = _REPLACEMENTS[type(m).__name__].from_module(m)
        if not name:
            raise TypeError("model is itself a hyper-connection module; pass the model "
                            "that contains it")
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, new)
    layers = [m for m in model.modules() if _fusable(m)]
    for layer in layers:
        layer.forward = types.MethodType(fused_layer_forward, layer)
    return len(targets) + len(layers)


_LAYER_PARTS = ("self_attn", "mlp", "input_layernorm", "post_attention_layernorm")


def _fusable(m):
    """A DeepSeek-V4 decoder layer of the expected structure, not given the fused
    forward yet."""
    return (type(m).__name__ == "DeepseekV4DecoderLayer" and "forward" not in vars(m)
            and all(isinstance(getattr(m, a, None), DeepseekV4Connection)
                    for a in ("attn_hc", "ffn_hc"))
            and all(isinstance(getattr(m, a, None), nn.Module) for a in _LAYER_PARTS))


def fused_layer_forward(self, hidden_states, input_ids=None, **kwargs):
    """transformers' ``DeepseekV4DecoderLayer.forward`` with the attention's post
    step and the MLP's pre step as one ``post_pre`` (x_next projected while it is
    written) and the MLP's post step on ``mhc_post``; ``hidden_states`` ``[B, S,
    hc_mult, hidden]`` throughout."""
    post, comb, collapsed = self.attn_hc(hidden_states)
    attn_output, _ = self.self_attn(self.input_layernorm(collapsed), **kwargs)
    hidden_states, post, comb, collapsed = self.ffn_hc.post_pre(hidden_states, attn_output,
                                                                post, comb)
    mlp_output = self.mlp(self.post_attention_layernorm(collapsed), input_ids=input_ids)
    return mhc_post(hidden_states, mlp_output, post, comb.transpose(-1, -2))

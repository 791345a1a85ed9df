"""VeRA (Kopiczko et al., 2024): one pair of frozen random matrices shared by all layers.

Only two vectors per adapted layer train: b (out_features, init 0, so the model starts equal to
the base) and d (r, init d_initial). PEFT's VeraConfig implements it; the shared projections are
saved with the adapter so it reloads without re-deriving them.
"""

from models.methods.base import AdapterMethod, AdapterSpec, seeded_peft_model


def build(model, spec: AdapterSpec):
    """Wrap `model` with VeRA on the target modules; projections seeded from adapter.seed."""
    from peft import VeraConfig

    config = VeraConfig(
        r=spec.r,
        target_modules=spec.target_modules,
        vera_dropout=spec.dropout,
        projection_prng_key=spec.seed,
        save_projection=True,
        task_type="CAUSAL_LM",
    )
    return seeded_peft_model(model, config, spec.seed)


METHOD = AdapterMethod(name="vera", summary="shared frozen A, B; trained vectors b, d", build=build)

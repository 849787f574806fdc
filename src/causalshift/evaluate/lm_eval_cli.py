"""lm-eval's own CLI with the `causalshift` model registered.

lm-eval 0.4.13 does not load models from package entry points, so `lm_eval --model
causalshift` alone cannot find ours. This wrapper registers it and hands every argument
to lm-eval's CLI unchanged:

    python -m causalshift.evaluate.lm_eval_cli --model causalshift \\
        --model_args path=RUN_DIR,dtype=bfloat16 --tasks hellaswag,arc_easy --batch_size 32
    accelerate launch -m causalshift.evaluate.lm_eval_cli --model causalshift ...   # N GPUs
    torchrun --nproc_per_node=N -m causalshift.evaluate.lm_eval_cli --model causalshift ...
"""

from __future__ import annotations


def main() -> None:
    """Register `causalshift` with lm-eval, then run lm-eval's CLI on sys.argv."""
    from lm_eval.__main__ import cli_evaluate

    import causalshift.evaluate.lm_eval_adapter  # noqa: F401  (registers the model)

    cli_evaluate()


if __name__ == "__main__":
    main()

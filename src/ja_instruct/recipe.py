"""The recipe: one YAML file with a section per stage.

```yaml
name: demo
data: {...}      # ja_instruct.data.config.DataConfig
pairs: {...}     # ja_instruct.pairs.config.PairsConfig (preference pairs for train.method: dpo)
train: {...}     # ja_instruct.train.config.TrainConfig
generate: {...}  # ja_instruct.generate.config.GenerateConfig
judge: {...}     # ja_instruct.judge.config.JudgeConfig
report: {...}    # ja_instruct.report.config.ReportConfig
```

Every stage writes under ``out_dir/<stage>`` unless its command gets ``--out``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import model_validator

from ja_instruct.config import StrictModel, load_config
from ja_instruct.data.config import DataConfig
from ja_instruct.generate.config import GenerateConfig
from ja_instruct.judge.config import JudgeConfig
from ja_instruct.pairs.config import PairsConfig
from ja_instruct.report.config import ReportConfig
from ja_instruct.train.config import TrainConfig

STAGES = ("data", "pairs", "train", "generate", "judge", "report")


class Recipe(StrictModel):
    """A whole run: data -> (pairs ->) train -> generate -> judge -> report."""

    name: str = "run"
    """Name of the run; used in output paths, model ids and the model card."""
    out_dir: Path | None = None
    """Root folder of every output of this recipe; default ``runs/<name>``."""
    seed: int = 0
    """Global random seed (data mixing, sampling, training, judging order)."""
    data: DataConfig | None = None
    """Data stage: sources, cleaning, mixture, licence policy (`ja-instruct data build`)."""
    pairs: PairsConfig | None = None
    """Preference pairs labelled by a judge, for `train.method: dpo` (`ja-instruct pairs`)."""
    train: TrainConfig | None = None
    """Training stage: SFT, or DPO on the pairs, with FSDP2 (`ja-instruct train`)."""
    generate: GenerateConfig | None = None
    """Answer generation for a question set (`ja-instruct generate`)."""
    judge: JudgeConfig | None = None
    """LLM-as-a-judge grading of the answers (`ja-instruct judge`)."""
    report: ReportConfig | None = None
    """HTML/Markdown/CSV report (`ja-instruct report`)."""

    @model_validator(mode="after")
    def _heldout_exists(self) -> "Recipe":
        # Caught when the recipe is read, not when generate starts after hours of training.
        nll = self.generate.reference_nll if self.generate is not None else None
        if (nll is not None and nll.references == "heldout" and self.data is not None
                and self.data.heldout.fraction == 0 and (self.train is None or self.train.dataset_dir is None)):
            raise ValueError("generate.reference_nll.references is 'heldout', but data.heldout.fraction is 0, so the "
                             "data stage holds nothing out: set data.heldout.fraction (e.g. 0.02), or point "
                             "references at a reference file")
        return self

    @property
    def root(self) -> Path:
        """The resolved output root."""
        return self.out_dir if self.out_dir is not None else Path("runs") / self.name

    @property
    def layout(self):
        """The run's `ja_instruct.manifest.RunLayout`: every stage's output folder, computed once
        (registered ``--out`` folders included)."""
        from ja_instruct.manifest import RunLayout

        return RunLayout(self.root)

    def stage_dir(self, stage: str) -> Path:
        """Output folder of a stage (``data``, ``train``, ``generate``/``answers``, ``judge``, ``report``),
        as the run layout resolves it."""
        return self.layout.stage_dir("generate" if stage == "answers" else stage)

    def require(self, stage: str):
        """The config section of ``stage``; a clear error if the recipe lacks it."""
        from ja_instruct.errors import UserError

        section = getattr(self, stage)
        if section is None:
            raise UserError(f"the recipe has no '{stage}' section", field=stage,
                            hint=f"Add a '{stage}:' section (see `ja-instruct {stage} --help`).")
        return section


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Load a recipe strictly (unknown keys are errors) with ``--set`` overrides applied."""
    return load_config(Recipe, path, overrides)

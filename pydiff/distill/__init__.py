"""Few-step and one-step students from many-step teachers.

    from pydiff.distill import ConsistencyDistillation, distill_consistency
    result = distill_consistency(teacher, images, cond={"y": labels}, uncond={"y": null_labels},
                                 settings=ConsistencyDistillation(guidance_scale=1.5))
    x0 = pydiff.sample(result.student, noise, sampler="lcm", steps=4, cond={"y": labels})

    from pydiff.distill import ScoreDistillation, distill_one_step     # data-free: only the conditions
    result = distill_one_step(teacher, (1, 16, 16), cond={"y": torch.arange(10)}, uncond={"y": torch.full((10,), 10)},
                              settings=ScoreDistillation(method="dmd", guidance_scale=1.5))
    x0 = pydiff.sample(result.student, noise, sampler="one_step", steps=1, cond={"y": labels})
    # DMD's regression loss: the teacher's deterministic samples from 1000 noises (teacher_pairs), regression_weight
    # DMD2's GAN: real=RealSamples(images, {"y": labels}), ScoreDistillation(gan_weight=...)
    # DMD2's K-step generator: ScoreDistillation(generator_steps=4), then pydiff.sample(..., sampler="lcm", steps=4)

``pydiff distill`` does either for the bundled digits model and reports the student beside its teacher.
"""

from .common import Distilled
from .consistency import ConsistencyDistillation, consistency_function, distill_consistency, student_scheduler_config
from .score import (Discriminator, RealSamples, ScoreDistillation, TeacherPairs, distill_one_step,
                    one_step_scheduler_config, teacher_pairs)

__all__ = ["ConsistencyDistillation", "Discriminator", "Distilled", "RealSamples", "ScoreDistillation", "TeacherPairs",
           "consistency_function", "distill_consistency", "distill_one_step", "one_step_scheduler_config",
           "student_scheduler_config", "teacher_pairs"]

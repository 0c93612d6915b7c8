"""Few-step students from many-step teachers.

    from pydiff.distill import ConsistencyDistillation, distill_consistency
    result = distill_consistency(teacher, images, cond={"y": labels}, uncond={"y": null_labels},
                                 settings=ConsistencyDistillation(guidance_scale=1.5))
    x0 = pydiff.sample(result.student, noise, sampler="lcm", steps=4, cond={"y": labels})

``pydiff distill`` does this for the bundled digits model and reports the student beside its teacher.
"""

from .consistency import (ConsistencyDistillation, Distilled, consistency_function, distill_consistency,
                          student_scheduler_config)

__all__ = ["ConsistencyDistillation", "Distilled", "consistency_function", "distill_consistency",
           "student_scheduler_config"]

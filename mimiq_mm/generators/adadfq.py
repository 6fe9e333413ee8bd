"""AdaDFQ (Qian et al., "Adaptive Data-Free Quantization", CVPR 2023): the generator adapts the
samples' difficulty to the quantized model being trained."""
from ..losses import adaptability_margin_loss, soft_cross_entropy
from ..registry import GENERATORS
from .base import check_classification, student_in_eval
from .gdfq import GDFQGenerator


@GENERATORS.register_module()
class AdaDFQGenerator(GDFQGenerator):
    """GDFQ's generator and alternation, with AdaDFQ's zero-sum game between generator and student.

    The generator's loss reads the student (quantized, run in eval mode with gradients through
    its input) as well as the teacher, with t, s their logits on the generated images:

    * disagreement α_ds·CE(softmax(t − s), y): samples on which the teacher is surer of y than the
      student (hard for the student);
    * agreement α_as·CE(softmax(t + s), y): samples both assign to y (keeps them on the class);
    * margins: each sample's normalised adaptability h' (the entropy of softmax(t − s), rescaled
      to [0, 1] within the batch) is held in [λ_l, λ_u]: ``mean(relu(λ_l − h')) +
      mean(relu(h' − λ_u))`` (:func:`mimiq_mm.losses.adaptability_margin_loss`), so the samples are
      neither too easy nor too hard for the current student.

    L_G = margins + β·(α_ds·L_ds + α_as·L_as) (the BatchNorm term left out). The student plays the
    other side: ``model.student_losses=[dict(type='mimiq_mm.DifferenceEntropyLoss', temperature=T)]``
    with ``model.kd.loss_weight=0`` (AdaDFQ's student maximises the entropy of softmax((t − s)/T)).

    Args (defaults: AdaDFQ's released ImageNet settings; the 3-bit file gives λ_l 0.1 and says
    0.3 for 4 and 5 bits, α_ds 0.2 and 0.3 for 5 bits):
        lower, upper (float): λ_l, λ_u (0.3, 0.8).
        disagreement_weight (float): α_ds (0.2).
        agreement_weight (float): α_as (0.1).
        class_weight (float): β (1.0).
        Others: as :class:`GDFQGenerator` (its milestones here: 350 of 400 epochs, (0.875,)).
    """
    method = 'AdaDFQ'
    reads_student = True

    def __init__(self, lower=0.3, upper=0.8, disagreement_weight=0.2, agreement_weight=0.1, class_weight=1.0,
                 lr_milestones=(0.875,), **kwargs):
        super().__init__(lr_milestones=lr_milestones, **kwargs)
        if not 0 <= lower <= upper <= 1:
            raise ValueError(f'AdaDFQ margins need 0 <= lower <= upper <= 1, got {lower}, {upper}')
        self.lower, self.upper = float(lower), float(upper)
        self.disagreement_weight, self.agreement_weight = float(disagreement_weight), float(agreement_weight)
        self.class_weight = float(class_weight)

    def build_network(self, distiller, num_classes, image_size):
        check_classification(distiller, self.method)
        return super().build_network(distiller, num_classes, image_size)

    def generator_loss(self, distiller, images, labels, targets):
        teacher = distiller.task.forward_prior(distiller.teacher, images)
        with student_in_eval(distiller) as student:
            student_logits = distiller.task.forward_tensor(student, images)
        disagreement = soft_cross_entropy(teacher - student_logits, labels)
        agreement = soft_cross_entropy(teacher + student_logits, labels)
        return dict(loss_margin=adaptability_margin_loss(teacher, student_logits, self.lower, self.upper),
                    loss_disagreement=self.class_weight * self.disagreement_weight * disagreement,
                    loss_agreement=self.class_weight * self.agreement_weight * agreement)

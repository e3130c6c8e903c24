"""amadeus.quant: calibration statistics and real int8 post-training quantization.

    stats = calibrate(model, ids, controls, batch_size)    # {module: {inputs: {0: ...}, output: ...}}
    info = quantize_model(model, stats, mode, clip)        # in place: int8 Linear/Embedding, decomposed GRU
    model = load_quantized(ckpt, fp32_architecture_model)  # what amadeus.checkpoint calls for int8
"""

from amadeus.quant.convert import (
    calibrate,
    calibration_model,
    decompose_grus,
    int8_with_random_calibration,
    load_quantized,
    quantize_model,
    set_eltwise_dtype,
    state_bytes,
)
from amadeus.quant.modules import DecomposedGRU, GRUCell, Int8Embedding, Int8Linear
from amadeus.quant.qtensor import CLIPS, MODES, clip_range, quantize_per_channel
from amadeus.quant.stats import StatsCollector, TensorStats

__all__ = [
    "CLIPS", "MODES", "DecomposedGRU", "GRUCell", "Int8Embedding", "Int8Linear", "StatsCollector",
    "TensorStats", "calibrate", "calibration_model", "clip_range", "decompose_grus",
    "int8_with_random_calibration", "load_quantized", "quantize_model", "quantize_per_channel", "set_eltwise_dtype",
    "state_bytes",
]

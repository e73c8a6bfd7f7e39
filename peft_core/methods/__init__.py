"""Every study method; importing this package registers them all."""
from . import adapters, baselines, bitfit, convpass, fact, lora, repadapter, selective, ssf, vpt, vqt

__all__ = ["adapters", "baselines", "bitfit", "convpass", "fact", "lora", "repadapter",
           "selective", "ssf", "vpt", "vqt"]

"""Pretrained networks from other code bases, read safely and mapped onto ours.

`safe_pickle` reads pickles and torch files without running code from them; `official` and
`gan_zoo` map the official ProGAN pickles and pytorch_GAN_zoo's PGAN checkpoints onto our
parameters (`imported.Imported`); `importer` writes them as a workdir (`--mode=import`).
"""

"""Importers for weights made by other projects (AdelaiDet, torchvision, MSRA / detectron2).

They read files, rename and check tensors, and load them into modules they are given; they
build no network and write no file (`factory`, `checkpoint_io` and `convert.py` do):
- `torchvision_weights.py`: ImageNet ResNet bodies and the input conventions they need
  (`resnet_names.py` holds the name maps, `pickles.py` the code-free readers);
- `adelaidet.py`: official BlendMask checkpoints (`adelaidet_keys.py` the rename table,
  `adelaidet_files.py` the reader, `adelaidet_arch.py` which preset fits a file).
"""

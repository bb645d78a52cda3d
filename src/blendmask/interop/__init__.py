"""Importers for weights made by other projects (AdelaiDet, torchvision, MSRA)."""

"""Network parts of BlendMask: backbone bodies, FPN, heads, blender, losses."""

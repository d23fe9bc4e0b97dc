"""Count `Any` in annotations (args, returns, annotated assignments, aliases) under a package.

Usage: python3 tools/any_count.py src/headstart   (the figure issue 21 halves; kept out of the package)
"""
import ast, os, sys
root = sys.argv[1]; total = 0; per = {}
for dp, _, fs in os.walk(root):
    for f in fs:
        if not f.endswith(".py"): continue
        p = os.path.join(dp, f); t = ast.parse(open(p).read()); n_any = 0
        anns = []
        for n in ast.walk(t):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = n.args
                for arg in a.args + a.kwonlyargs + a.posonlyargs + [a.vararg, a.kwarg]:
                    if arg is not None and arg.annotation is not None: anns.append(arg.annotation)
                if n.returns is not None: anns.append(n.returns)
            elif isinstance(n, ast.AnnAssign): anns.append(n.annotation)
        for a in anns:
            n_any += sum(1 for x in ast.walk(a) if (isinstance(x, ast.Name) and x.id == "Any") or (isinstance(x, ast.Attribute) and x.attr == "Any") or (isinstance(x, ast.Constant) and isinstance(x.value, str) and "Any" in x.value))
        if n_any: per[p] = n_any; total += n_any
print("any_annotations", total)
for p, c in sorted(per.items(), key=lambda kv: -kv[1])[:8]: print(c, p)

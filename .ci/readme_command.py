"""Print one of the README's two set-up commands, as the README writes it.

    python .ci/readme_command.py main    # installs and runs the benchmark
    python .ci/readme_command.py test    # installs the test extras and runs the tests

CI runs exactly these strings, so the README cannot drift from what is tested.
"""
import os
import re
import sys

LEAD = {"main": "Install and run the main job", "test": "Install the test extras"}

readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
section = readme[readme.index(LEAD[sys.argv[1]]):]
print(re.search(r"```bash\n(.*?)\n```", section, re.S).group(1).strip())

"""What the project says about itself: the paper it follows and where it lives.

One place for the citation and the links, so the README, the Slicer modules'
help and acknowledgement text, the HTML reports and the extension metadata
cannot drift apart (``Testing/test_slicer_static.py`` checks the copies that
cannot import this module: the module files load without T1ToT2Lib).
"""

#: The paper T1ToT2 follows.
CITATION = (
    "J. A. Grant-Jacob, C. Everitt, R. W. Eason, L. J. King and B. Mills, "
    "\"Exploring sequence transformation in magnetic resonance imaging via deep learning using data from a "
    "single asymptomatic patient\", J. Phys. Commun. 5, 095015 (2021)"
)
CITATION_SHORT = "Grant-Jacob et al., J. Phys. Commun. 5, 095015 (2021)"

# ---------------------------------------------------------------------------------------------
# REPOSITORY URL: the one place to change when the project gets its public home.
# CMakeLists.txt (EXTENSION_HOMEPAGE, ICONURL, SCREENSHOTURLS), T1ToT2.json and the modules'
# help text repeat it; Testing/test_slicer_static.py fails when a copy differs from this one.
# ---------------------------------------------------------------------------------------------
REPOSITORY_URL = "https://github.com/T1ToT2/SlicerT1ToT2"
DOCUMENTATION_URL = REPOSITORY_URL + "#readme"

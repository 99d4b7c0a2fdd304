"""The paper's §4 ablations as studies: definitions (``studies``), runs (``runner``), report (``report``)."""

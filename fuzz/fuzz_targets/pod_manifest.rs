//! The manifest parser and validator (vmm/src/pod/manifest.rs): any text a
//! user hands `unipod run -f` or `unipod apply -f`, Pods, ConfigMaps and
//! Secrets alike, then the resolution of what the pod takes from them
//! (env, `$(VAR)` expansion, volume files). It must answer with documents
//! or errors, never panic or blow up (anchors and aliases included).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm::pod::config_sources::{container_env, volume_files, PodFacts};
use vmm::pod::manifest::VolumeSource;
use vmm::pod::objects::Catalog;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(documents) = vmm::pod::manifest::parse_documents(text) else {
        return;
    };
    let catalog = Catalog::default().with(&documents.objects);
    let facts = PodFacts::default();
    for (pod, _warnings) in &documents.pods {
        let _ = pod.vm_size();
        for c in pod.init_containers.iter().chain(&pod.containers) {
            let _ = container_env(pod, c, &facts, &catalog);
        }
        for v in &pod.volumes {
            if let VolumeSource::Files(sources) = &v.source {
                let _ = volume_files(pod, &v.name, sources, &facts, &catalog);
            }
        }
    }
});

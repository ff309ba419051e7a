//! Every interface, world, function, type, field and case of the plugin contract
//! (`wit/tocsin.wit`) carries a doc comment: plugin authors read the contract as its reference.

use tocsin_tests::repo_root;
use wit_parser::{Docs, Resolve, Type, TypeDefKind};

#[test]
fn every_item_of_the_contract_is_documented() {
    let mut resolve = Resolve::default();
    let (package, _) = resolve
        .push_dir(repo_root().join("wit"))
        .expect("wit/ parses");
    let mut missing = Vec::new();
    let mut check = |docs: &Docs, what: String| {
        if docs.contents.as_deref().is_none_or(|d| d.trim().is_empty()) {
            missing.push(what);
        }
    };
    let mut counted = 0;
    for (_, world) in resolve
        .worlds
        .iter()
        .filter(|(_, w)| w.package == Some(package))
    {
        check(&world.docs, format!("world {}", world.name));
        counted += 1;
    }
    for (_, iface) in resolve
        .interfaces
        .iter()
        .filter(|(_, i)| i.package == Some(package))
    {
        let name = iface.name.clone().unwrap_or_default();
        check(&iface.docs, format!("interface {name}"));
        for (fname, func) in &iface.functions {
            check(&func.docs, format!("{name}.{fname}"));
            counted += 1;
        }
        for (tname, id) in &iface.types {
            let ty = &resolve.types[*id];
            // `use types.{message}` makes an alias of a type documented where it is defined.
            if matches!(ty.kind, TypeDefKind::Type(Type::Id(_))) {
                continue;
            }
            check(&ty.docs, format!("{name}.{tname}"));
            counted += 1;
            match &ty.kind {
                TypeDefKind::Record(r) => {
                    for f in &r.fields {
                        check(&f.docs, format!("{name}.{tname}.{}", f.name));
                    }
                }
                TypeDefKind::Variant(v) => {
                    for c in &v.cases {
                        check(&c.docs, format!("{name}.{tname}.{}", c.name));
                    }
                }
                TypeDefKind::Enum(e) => {
                    for c in &e.cases {
                        check(&c.docs, format!("{name}.{tname}.{}", c.name));
                    }
                }
                _ => {}
            }
        }
    }
    assert!(counted > 15, "the contract was read ({counted} items)");
    assert!(
        missing.is_empty(),
        "undocumented in wit/tocsin.wit: {missing:?}"
    );
}

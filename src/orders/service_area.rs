//! Where the service runs: pickups and drops outside it are refused (422
//! `OUTSIDE_SERVICE_AREA`). Configured as GeoJSON polygons (inline, or a file) and/or H3 cells
//! of any resolution; a point is inside if any of them contains it. Nothing configured means
//! everywhere, which suits trying the server out.

use std::collections::HashSet;

use geo::{Contains, Coord, LineString, MultiPolygon, Point, Polygon};
use h3o::{CellIndex, Resolution};
use serde::Deserialize;
use serde_json::Value;

use crate::domain::LatLng;

/// `[service_area]` configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceAreaConfig {
    /// GeoJSON: a Polygon, MultiPolygon, Feature or FeatureCollection of those.
    pub geojson: String,
    /// A file holding such GeoJSON.
    pub geojson_file: String,
    /// H3 cells (as hex strings), any resolution.
    pub h3_cells: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct ServiceArea {
    polygons: MultiPolygon<f64>,
    cells: HashSet<CellIndex>,
    resolutions: Vec<Resolution>,
}

impl ServiceArea {
    /// Everywhere.
    pub fn unrestricted() -> Self {
        Self { polygons: MultiPolygon(Vec::new()), cells: HashSet::new(), resolutions: Vec::new() }
    }

    /// From configuration; the error names what is wrong.
    pub fn from_config(config: &ServiceAreaConfig) -> Result<Self, String> {
        let mut polygons = Vec::new();
        if !config.geojson.trim().is_empty() {
            polygons.extend(parse_geojson(&config.geojson)?);
        }
        if !config.geojson_file.trim().is_empty() {
            let text = std::fs::read_to_string(&config.geojson_file)
                .map_err(|err| format!("cannot read {}: {err}", config.geojson_file))?;
            polygons.extend(parse_geojson(&text)?);
        }
        let mut cells = HashSet::new();
        for text in &config.h3_cells {
            cells.insert(text.parse::<CellIndex>().map_err(|_| format!("{text:?} is not an H3 cell"))?);
        }
        let mut resolutions: Vec<Resolution> = cells.iter().map(|cell| cell.resolution()).collect();
        resolutions.sort();
        resolutions.dedup();
        Ok(Self { polygons: MultiPolygon(polygons), cells, resolutions })
    }

    pub fn is_unrestricted(&self) -> bool {
        self.polygons.0.is_empty() && self.cells.is_empty()
    }

    pub fn contains(&self, point: LatLng) -> bool {
        if self.is_unrestricted() {
            return true;
        }
        let in_polygons = self.polygons.contains(&Point::new(point.lng(), point.lat()));
        in_polygons || self.in_cells(point)
    }

    fn in_cells(&self, point: LatLng) -> bool {
        let Ok(h3) = h3o::LatLng::new(point.lat(), point.lng()) else { return false };
        self.resolutions.iter().any(|resolution| self.cells.contains(&h3.to_cell(*resolution)))
    }
}

fn parse_geojson(text: &str) -> Result<Vec<Polygon<f64>>, String> {
    let value: Value = serde_json::from_str(text).map_err(|err| format!("not JSON: {err}"))?;
    let mut polygons = Vec::new();
    collect(&value, &mut polygons)?;
    if polygons.is_empty() {
        return Err("holds no Polygon or MultiPolygon".into());
    }
    Ok(polygons)
}

fn collect(value: &Value, out: &mut Vec<Polygon<f64>>) -> Result<(), String> {
    match value["type"].as_str() {
        Some("FeatureCollection") => {
            for feature in value["features"].as_array().ok_or("FeatureCollection without features")? {
                collect(feature, out)?;
            }
        }
        Some("Feature") => collect(&value["geometry"], out)?,
        Some("Polygon") => out.push(polygon(&value["coordinates"])?),
        Some("MultiPolygon") => {
            for rings in value["coordinates"].as_array().ok_or("MultiPolygon without coordinates")? {
                out.push(polygon(rings)?);
            }
        }
        Some(other) => return Err(format!("{other} is not an area (use Polygon or MultiPolygon)")),
        None => return Err("a GeoJSON object needs a type".into()),
    }
    Ok(())
}

/// `[[[lng, lat], ...], ...]`: the outer ring, then holes.
fn polygon(rings: &Value) -> Result<Polygon<f64>, String> {
    let rings = rings.as_array().ok_or("polygon coordinates must be an array of rings")?;
    let mut rings = rings.iter().map(ring);
    let exterior = rings.next().ok_or("a polygon needs an outer ring")??;
    let holes = rings.collect::<Result<Vec<_>, _>>()?;
    Ok(Polygon::new(exterior, holes))
}

fn ring(positions: &Value) -> Result<LineString<f64>, String> {
    let positions = positions.as_array().ok_or("a ring must be an array of positions")?;
    let coords = positions
        .iter()
        .map(|position| match (position[0].as_f64(), position[1].as_f64()) {
            (Some(lng), Some(lat)) if LatLng::new(lat, lng).is_ok() => Ok(Coord { x: lng, y: lat }),
            _ => Err(format!("{position} is not a [lng, lat] position")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    if coords.len() < 4 {
        return Err("a ring needs at least 4 positions (closed)".into());
    }
    Ok(LineString::new(coords))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BENGALURU: &str = r#"{"type": "Feature", "properties": {}, "geometry": {"type": "Polygon",
        "coordinates": [[[77.45, 12.85], [77.75, 12.85], [77.75, 13.10], [77.45, 13.10], [77.45, 12.85]]]}}"#;

    fn area(geojson: &str, cells: &[&str]) -> Result<ServiceArea, String> {
        ServiceArea::from_config(&ServiceAreaConfig {
            geojson: geojson.into(),
            geojson_file: String::new(),
            h3_cells: cells.iter().map(|cell| cell.to_string()).collect(),
        })
    }

    #[test]
    fn polygons_and_cells_bound_the_service() {
        let area = area(BENGALURU, &["8760145b4ffffff"]).unwrap();
        assert!(area.contains(LatLng::new(12.97, 77.59).unwrap()));
        assert!(!area.contains(LatLng::new(19.07, 72.87).unwrap()), "Mumbai");
        let only_cells = self::area("", &["8760145b4ffffff"]).unwrap();
        assert!(only_cells.contains(LatLng::new(12.9785, 77.5904).unwrap()));
        assert!(!only_cells.contains(LatLng::new(12.90, 77.50).unwrap()));
    }

    #[test]
    fn nothing_configured_means_everywhere() {
        let everywhere = area("", &[]).unwrap();
        assert!(everywhere.is_unrestricted() && everywhere.contains(LatLng::new(-33.9, 18.4).unwrap()));
    }

    #[test]
    fn bad_areas_say_why() {
        assert!(area("{", &[]).unwrap_err().contains("not JSON"));
        assert!(area(r#"{"type": "Point", "coordinates": [77.5, 12.9]}"#, &[]).unwrap_err().contains("not an area"));
        let open_ring = r#"{"type": "Polygon", "coordinates": [[[77.4, 12.8], [77.7, 12.8], [77.4, 12.8]]]}"#;
        assert!(area(open_ring, &[]).unwrap_err().contains("at least 4"));
        assert!(area("", &["not-a-cell"]).unwrap_err().contains("not an H3 cell"));
    }
}
